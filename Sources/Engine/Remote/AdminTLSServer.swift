import AdminProtocol
import Chan
import Logging
import NIOConcurrencyHelpers
import Remote

/// The admin requests over TCP with mutual TLS (`--admin-listen tcp://HOST:PORT`): the same
/// commands as the admin socket, for clients whose certificate chains to the CA bundle and
/// whose subject's common name is one of `clients` — the certificate's name is the identity,
/// as the uid is on the unix socket. Anyone else is refused during the TLS handshake (a
/// certificate that does not verify) or right after it, before any frame, with the reason.
public final class AdminTLSServer: Sendable {
    private let listener: RemoteListener
    private let engine: Engine
    private let clients: Set<String>
    private let builtins: AdminServer.BuiltinLookup
    private let logger: Logger
    private let open = NIOLockedValueBox<[ObjectIdentifier: Session]>([:])
    /// Sessions served at once, at most.
    public static let maximumSessions = 64

    /// Where it listens (the port the kernel picked for port 0).
    public var endpoint: RemoteEndpoint { listener.endpoint }

    private init(listener: RemoteListener, engine: Engine, clients: Set<String>, builtins: @escaping AdminServer.BuiltinLookup, logger: Logger) {
        self.listener = listener
        self.engine = engine
        self.clients = clients
        self.builtins = builtins
        self.logger = logger
    }

    /// Binds `endpoint` (TCP) with `tls`; ``serve()`` answers from then on.
    public static func start(
        _ endpoint: RemoteEndpoint, tls: TLSFiles, clients: Set<String>, engine: Engine,
        builtins: @escaping AdminServer.BuiltinLookup, logger: Logger
    ) async throws -> AdminTLSServer {
        guard case .tcp = endpoint else { throw EngineError(.adminSocket, "--admin-listen takes tcp://HOST:PORT, not \(endpoint)") }
        let listener = try await RemoteListener.bind(endpoint, tls: tls, maxFrameSize: Session.Configuration(name: "plugboardd").maxFrameSize, logger: logger)
        logger.info("admin listening over TLS", metadata: ["admin.listen": "\(listener.endpoint)", "admin.clients": "\(clients.sorted().joined(separator: ","))"])
        return AdminTLSServer(listener: listener, engine: engine, clients: clients, builtins: builtins, logger: logger)
    }

    /// Serves every client until ``close()``.
    public func serve() async {
        await withDiscardingTaskGroup { group in
            for await connection in listener.connections {
                let session = connection.session(role: .acceptor, configuration: .init(name: "plugboardd"), logger: logger)
                guard case .certificate(let cn) = connection.peer.identity, let cn, clients.contains(cn) else {
                    let name: String
                    if case .certificate(let cn?) = connection.peer.identity { name = "CN=\(cn)" } else { name = "a certificate without a CN" }
                    let why = "\(name) is not an admin client of this daemon (--admin-client)"
                    logger.warning("admin connection refused", metadata: ["admin.peer": "\(connection.peer)", "admin.reason": "\(why)"])
                    // Before any HELLO: the client hears the reason as the refusal of its session.
                    session.close(reason: "refused: \(why)")
                    continue
                }
                let id = ObjectIdentifier(session)
                let admitted = open.withLockedValue { sessions -> Bool in
                    guard sessions.count < Self.maximumSessions else { return false }
                    sessions[id] = session
                    return true
                }
                guard admitted else {
                    session.close(reason: "refused: all \(Self.maximumSessions) admin sessions over TLS are taken")
                    continue
                }
                group.addTask { [engine, builtins, logger, open] in
                    var logger = logger
                    logger[metadataKey: "admin.peer"] = "\(connection.peer)"
                    await AdminServer.serve(session, engine: engine, builtins: builtins, logger: logger)
                    open.withLockedValue { _ = $0.removeValue(forKey: id) }
                }
            }
        }
    }

    /// Stops accepting and ends the sessions being served.
    public func close() async {
        await listener.close()
        for session in open.withLockedValue({ Array($0.values) }) { session.close(reason: "plugboardd is shutting down") }
    }
}
