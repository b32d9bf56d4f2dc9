import AdminProtocol
import Chan
import Foundation
import Logging
import Remote

extension AdminClient {
    /// The TLS files: the flags, each else its `PLUGBOARD_TLS_*` variable.
    func tlsFiles() throws -> TLSFiles {
        let environment = ProcessInfo.processInfo.environment
        let cert = tlsFlags.cert ?? environment["PLUGBOARD_TLS_CERT"]
        let key = tlsFlags.key ?? environment["PLUGBOARD_TLS_KEY"]
        let ca = tlsFlags.ca ?? environment["PLUGBOARD_TLS_CA"]
        guard let cert, let key, let ca, !cert.isEmpty, !key.isEmpty, !ca.isEmpty else {
            throw CLIError("\(path) needs this client's certificate, its key and the CA bundle: --tls-cert, --tls-key, --tls-ca (or PLUGBOARD_TLS_CERT, PLUGBOARD_TLS_KEY, PLUGBOARD_TLS_CA)", code: "cli.tls")
        }
        return TLSFiles(certificate: cert, key: key, ca: ca)
    }

    /// A session with a daemon's `--admin-listen`, over TCP with mutual TLS.
    func openTCP(logger: Logger) async throws -> (Session, Sender) {
        let endpoint: RemoteEndpoint
        do { endpoint = try RemoteEndpoint(parsing: path) } catch { throw CLIError("\(error)", code: "cli.usage") }
        let files = try tlsFiles()
        let session: Session
        do {
            session = try await RemoteConnector.connect(
                to: endpoint, tls: files, role: .initiator, configuration: .init(name: "plugboard", handshakeTimeout: handshakeTimeout), logger: logger
            )
        } catch let error as TLSSetupError {
            throw CLIError("\(error)", code: "cli.tls")
        } catch {
            throw CLIError("cannot connect to plugboardd at \(path): \(error)", code: "cli.not-running")
        }
        do {
            try await session.start()
        } catch let error as ChanError where error.code == .peerGone {
            session.close(reason: "refused")
            // "the peer refused the session: closed locally: refused: WHY": the WHY.
            let why = error.reason.range(of: "refused: ", options: .backwards).map { String(error.reason[$0.upperBound...]) } ?? error.reason
            throw CLIError("plugboardd at \(path) refused this connection: \(why)", code: "cli.refused")
        } catch {
            session.close(reason: "no handshake")
            throw CLIError("plugboardd at \(path) did not complete the handshake: \(error)", code: "cli.handshake")
        }
        // A refusal after the HELLO (the certificate's name is not an admin client) comes as
        // a GOAWAY: the first request fails with its reason, which send() reports.
        return (session, try session.open(label: AdminSocket.channelLabel))
    }
}
