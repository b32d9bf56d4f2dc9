#if canImport(Glibc)
import Glibc
#endif
import Chan
import Engine
import Foundation
import Remote
import Routing
import Spawn
import Testing
import TestSupport

/// Certificates the tests make with the openssl CLI in a temp directory: a CA, another CA,
/// the daemon's certificate, and client certificates — good, expired, from the other CA,
/// and one whose CN names another plugin.
struct TestCertificates {
    let dir: String

    var ca: String { dir + "/ca.pem" }
    var otherCA: String { dir + "/other-ca.pem" }
    /// The daemon's (CN=plugboardd), signed by the CA.
    var server: (cert: String, key: String) { (dir + "/plugboardd.pem", dir + "/plugboardd.key") }

    /// A client certificate `name` (its file stem) made by ``make(in:clients:)``.
    func client(_ name: String) -> (String, String, String) { (dir + "/\(name).pem", dir + "/\(name).key", ca) }

    /// A client certificate with CN `cn` under the file stem `name`, signed by the CA (or the
    /// other CA), valid for a day or expired yesterday.
    struct Client {
        var name: String
        var cn: String
        var expired = false
        var otherCA = false
    }

    static func make(in dir: String, clients: [Client]) async throws -> TestCertificates {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let certs = TestCertificates(dir: dir)
        func openssl(_ arguments: [String]) async throws {
            let run = try await runCommand("/usr/bin/openssl", arguments)
            try #require(run.status == .exited(0), "openssl \(arguments.joined(separator: " ")): \(run.err)")
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        try await openssl(["req", "-x509"] + ec + ["-keyout", dir + "/ca.key", "-out", dir + "/ca.pem", "-subj", "/CN=plugboard-test-ca", "-days", "2"])
        try await openssl(["req", "-x509"] + ec + ["-keyout", dir + "/other-ca.key", "-out", dir + "/other-ca.pem", "-subj", "/CN=some-other-ca", "-days", "2"])
        func sign(_ stem: String, cn: String, days: String, ca: String) async throws {
            try await openssl(["req"] + ec + ["-keyout", dir + "/\(stem).key", "-out", dir + "/\(stem).csr", "-subj", "/CN=\(cn)"])
            try await openssl(["x509", "-req", "-in", dir + "/\(stem).csr", "-CA", dir + "/\(ca).pem", "-CAkey", dir + "/\(ca).key", "-CAcreateserial", "-out", dir + "/\(stem).pem", "-days", days])
        }
        try await sign("plugboardd", cn: "plugboardd", days: "1", ca: "ca")
        for c in clients {
            try await sign(c.name, cn: c.cn, days: c.expired ? "-1" : "1", ca: c.otherCA ? "other-ca" : "ca")
        }
        return certs
    }
}

/// Remote plugins over TCP with mutual TLS: the certificate names the plugin; an unknown,
/// expired or foreign certificate is refused during the handshake, a name the certificate
/// does not allow after it, each with the reason on both sides.
@Suite("remote plugins over TCP with mutual TLS", .serialized)
struct RemoteTLSTests {
    let dir = "/tmp/plugboard-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    @Test("a plugin with a certificate for its name connects over TLS, serves, and is listed with its peer")
    func tlsPluginServes() async throws {
        let certs = try await TestCertificates.make(in: dir, clients: [.init(name: "far", cn: "far")])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let engine = Engine(logger: quietLogger)
        try await engine.boot([PluginSpec(name: "far", kind: .remote(RemoteAccess()), startTimeout: .seconds(3))])
        let listener = try await RemoteListener.bind(
            .tcp(host: "127.0.0.1", port: 0), tls: TLSFiles(certificate: certs.server.cert, key: certs.server.key, ca: certs.ca),
            maxFrameSize: Engine.maxFrameFromPlugins, logger: quietLogger
        )
        let serving = Task { await engine.servePlugins(on: listener) }
        let events = engine.events()
        let plugin = try RemotePluginProcess.start(connect: "\(listener.endpoint)", name: "far", options: "provides=far.echo", tls: certs.client("far"))
        do {
            _ = try await waitForEvent(events, "far active over TLS") { $0.plugin == "far" && $0.state == .active }
            #expect(try await engine.hub.call("far.echo", .string("tls"), timeout: .seconds(5)) == .string("tls"))
            let peer = await engine.status().first { $0.name == "far" }?.peer
            #expect(peer?.contains("127.0.0.1:") == true && peer?.contains("CN=far") == true, "\(String(describing: peer))")
        } catch {
            await plugin.kill()
            await listener.close()
            await engine.shutdown(grace: .zero)
            throw error
        }
        await plugin.kill()
        await listener.close()
        await serving.value
        await engine.shutdown(grace: .milliseconds(200))
    }

    @Test("plugboardd refuses an expired certificate, another CA's and a name the certificate does not allow, each with a clear error on both sides")
    func daemonRefusals() async throws {
        let certs = try await TestCertificates.make(in: dir, clients: [
            .init(name: "far", cn: "far"), .init(name: "far-expired", cn: "far", expired: true),
            .init(name: "far-foreign", cn: "far", otherCA: true), .init(name: "mallory", cn: "mallory"),
        ])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let place = DaemonPlace("remote-tls")
        let port = try freeTCPPort()
        let daemon = try await place.startDaemon([
            "--plugin-listen", "tcp://127.0.0.1:\(port)", "--plugin-remote", "far",
            "--tls-cert", certs.server.cert, "--tls-key", certs.server.key, "--tls-ca", certs.ca,
        ])
        var plugins: [RemotePluginProcess] = []
        do {
            let connect = "tcp://127.0.0.1:\(port)"
            try await checkTLSRefusals(connect: connect, certs: certs, daemon: daemon, netns: nil, plugins: &plugins)
            #expect(try await place.cli(["plugin", "ls"]).out.contains("away"))
            let good = try RemotePluginProcess.start(connect: connect, name: "far", options: "provides=far.echo", tls: certs.client("far"))
            plugins.append(good)
            _ = try await withDeadline(20, "far connected") { await daemon.log.waitFor("remote plugin connected") }
            let call = try await place.cli(["call", "far.echo", "\"over tls\""])
            #expect(call.status == .exited(0) && call.out.contains("over tls"), "\(call)")
        } catch {
            for p in plugins { await p.kill() }
            await place.stop(daemon)
            throw error
        }
        for p in plugins { await p.kill() }
        await place.stop(daemon)
    }

    @Test("--admin-listen: the CLI with -H tcp:// and a certificate named on --admin-client is served; another name is refused with the reason; no certificate, cli.tls")
    func adminOverTLS() async throws {
        let certs = try await TestCertificates.make(in: dir, clients: [.init(name: "ops", cn: "ops"), .init(name: "mallory", cn: "mallory")])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let place = DaemonPlace("admin-tls")
        let port = try freeTCPPort()
        let daemon = try await place.startDaemon([
            "--admin-listen", "tcp://127.0.0.1:\(port)", "--admin-client", "ops",
            "--tls-cert", certs.server.cert, "--tls-key", certs.server.key, "--tls-ca", certs.ca,
        ])
        try await whileRunning(daemon) {
            let plugboard = try builtExecutable("plugboard")
            let host = "tcp://127.0.0.1:\(port)"
            let (cert, key, ca) = certs.client("ops")
            let ls = try await runCommand(plugboard, ["-H", host, "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca, "plugin", "ls"])
            #expect(ls.status == .exited(0) && ls.out.contains("echo"), "\(ls)")
            let call = try await runCommand(plugboard, ["call", "echo", "\"via tls\"", "-H", host], environment: [
                "PATH": "/usr/bin:/bin", "PLUGBOARD_TLS_CERT": cert, "PLUGBOARD_TLS_KEY": key, "PLUGBOARD_TLS_CA": ca,
            ])
            #expect(call.status == .exited(0) && call.out.contains("via tls"), "\(call)")
            let (mCert, mKey, _) = certs.client("mallory")
            let refused = try await runCommand(plugboard, ["-H", host, "--tls-cert", mCert, "--tls-key", mKey, "--tls-ca", ca, "plugin", "ls"])
            #expect(refused.status != .exited(0) && refused.err.contains("refused this connection: CN=mallory is not an admin client"), "\(refused)")
            let logged = try await withDeadline(20, "the daemon's refusal") { await daemon.log.waitFor("admin connection refused") }
            #expect(logged?.contains("mallory") == true, "\(String(describing: logged))")
            let bare = try await runCommand(plugboard, ["-H", host, "plugin", "ls"])
            #expect(bare.status != .exited(0) && bare.err.contains("needs this client's certificate"), "\(bare)")
        }
        await place.stop(daemon)
    }

    @Test("a TCP listener without TLS files is refused at startup, saying so")
    func tcpNeedsTLS() async throws {
        let place = DaemonPlace("remote-notls")
        let daemon = try await Daemon.start(in: place.dir, ["--plugin-listen", "tcp://127.0.0.1:0"])
        let status = await daemon.process.waitForExit()
        #expect(status != .exited(0))
        #expect(daemon.log.all.joined(separator: "\n").contains("needs mutual TLS"), "\(daemon.log.all)")
        try? FileManager.default.removeItem(atPath: place.dir)
    }
}

/// A TCP port free on 127.0.0.1 now (bound to port 0, read back, closed).
func freeTCPPort(host: String = "127.0.0.1") throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    try #require(fd >= 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr(host)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    try #require(bound == 0, "bind: \(errno)")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}
