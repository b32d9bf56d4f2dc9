#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// Two hosts on this machine: network namespaces joined by a veth pair. Names are unique per
/// run; ``remove()`` deletes both namespaces (and with them the veth pair).
struct TwoHosts {
    let daemonNS: String
    let pluginNS: String
    let daemonLink: String
    let pluginLink: String
    let daemonAddress: String
    let pluginAddress: String

    static func make() async throws -> TwoHosts {
        try #require(getuid() == 0, "the network namespace tests need root (ip netns add); run make test as root, as CI does")
        try #require(access("/usr/sbin/ip", X_OK) == 0, "iproute2 is not installed: make deps installs it")
        try #require(access("/usr/bin/nsenter", X_OK) == 0, "nsenter (util-linux) is not installed")
        let tag = String(UInt32.random(in: 0...0xFFFFF), radix: 16)
        let subnet = Int.random(in: 1...254)
        let hosts = TwoHosts(
            daemonNS: "pb-d-\(getpid())-\(tag)", pluginNS: "pb-p-\(getpid())-\(tag)", daemonLink: "pbd\(tag)", pluginLink: "pbp\(tag)",
            daemonAddress: "10.213.\(subnet).1", pluginAddress: "10.213.\(subnet).2"
        )
        do {
            try await ip(["netns", "add", hosts.daemonNS])
            try await ip(["netns", "add", hosts.pluginNS])
            try await ip(["link", "add", hosts.daemonLink, "netns", hosts.daemonNS, "type", "veth", "peer", "name", hosts.pluginLink, "netns", hosts.pluginNS])
            for (ns, link, address) in [(hosts.daemonNS, hosts.daemonLink, hosts.daemonAddress), (hosts.pluginNS, hosts.pluginLink, hosts.pluginAddress)] {
                try await ip(["-n", ns, "addr", "add", address + "/24", "dev", link])
                try await ip(["-n", ns, "link", "set", link, "up"])
                try await ip(["-n", ns, "link", "set", "lo", "up"])
            }
        } catch {
            await hosts.remove()
            throw error
        }
        return hosts
    }

    static func ip(_ arguments: [String]) async throws {
        let run = try await runCommand("/usr/sbin/ip", arguments)
        try #require(run.status == .exited(0), "ip \(arguments.joined(separator: " ")): \(run.err)")
    }

    /// Pulls the daemon's end of the link (`up: false`) or plugs it back.
    func setDaemonLink(up: Bool) async throws {
        try await Self.ip(["-n", daemonNS, "link", "set", daemonLink, up ? "up" : "down"])
    }

    /// Deletes both namespaces; the veth pair goes with them.
    func remove() async {
        _ = try? await runCommand("/usr/sbin/ip", ["netns", "del", daemonNS])
        _ = try? await runCommand("/usr/sbin/ip", ["netns", "del", pluginNS])
    }

    /// plugboardd in the daemon's namespace (nsenter: only the network namespace changes, so
    /// cgroups and runc work as on the host), and ready.
    func startDaemon(socket: String, stateDirectory: String, _ arguments: [String]) async throws -> Daemon {
        let err = try PipeDescriptors.make()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: "/usr/bin/nsenter",
            arguments: ["--net=/run/netns/\(daemonNS)", "--", try builtExecutable("plugboardd"), "--admin-socket", socket, "--state-dir", stateDirectory, "--shutdown-grace", "1"] + arguments,
            environment: childEnvironment(["PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp"]), fileDescriptors: [2: err.writeEnd]
        ))
        close(err.writeEnd)
        let daemon = Daemon(process: process, log: LogLines(fd: err.readEnd))
        let ready = try await withDeadline(60, "plugboardd ready in its namespace") { await daemon.log.waitFor("plugboardd ready") }
        if ready == nil {
            daemon.process.signal(SIGKILL)
            _ = await daemon.process.waitForExit()
        }
        try #require(ready != nil, "plugboardd did not get ready; its log: \(daemon.log.all.suffix(8))")
        return daemon
    }
}

/// The Python of the venv `make pydeps` makes (msgpack installed); the SDK is taken from
/// sdk/python through PYTHONPATH. Missing: fails saying how to make it.
func pythonVenvForTests() throws -> String {
    let python = repositoryRoot + "/.build/python-venv/bin/python"
    try #require(access(python, X_OK) == 0, "\(python) is missing: run `make pydeps` (make test does) to make the Python SDK's venv")
    return python
}

/// Polls an async condition (a CLI call) until it holds, failing at the deadline.
func waitUntilAsync(_ seconds: Double, _ what: String, _ condition: @escaping @Sendable () async throws -> Bool) async throws {
    try await withDeadline(seconds, what) {
        while !(try await condition()) { try await Task.sleep(for: .milliseconds(50)) }
    }
}

@Suite("remote plugins across hosts (network namespaces)", .serialized)
struct RemoteNetnsTests {
    @Test("a plugin on another host serves a job and a container.create hook over TLS; pulling the link fails in-flight calls and withdraws the hook; plugged back, it re-registers; wrong CA, expired certificate and a name not allowed are refused on both sides")
    func acrossHosts() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("netns")
        let hosts = try await TwoHosts.make()
        var plugins: [RemotePluginProcess] = []
        var daemon: Daemon?
        do {
            let certs = try await TestCertificates.make(in: dir + "/certs", clients: [
                .init(name: "far", cn: "far"), .init(name: "far-expired", cn: "far", expired: true),
                .init(name: "far-foreign", cn: "far", otherCA: true), .init(name: "mallory", cn: "mallory"),
                .init(name: "py-far", cn: "py-far"),
            ])
            let rootfs = try busyboxRootfs(in: dir)
            let socket = dir + "/admin.sock"
            let started = try await hosts.startDaemon(socket: socket, stateDirectory: dir + "/state", [
                "--plugin", "containers", "--plugin-listen", "tcp://\(hosts.daemonAddress):7443", "--plugin-remote", "far", "--plugin-remote", "py-far",
                "--tls-cert", certs.server.cert, "--tls-key", certs.server.key, "--tls-ca", certs.ca,
            ])
            daemon = started
            let plugboard = try builtExecutable("plugboard")
            @Sendable func cli(_ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
                try await runCommand(plugboard, ["--socket", socket] + arguments)
            }
            @Sendable func farState() async throws -> String? {
                let ls = try await cli(["plugin", "ls", "--format", "json"])
                let rows = try JSONSerialization.jsonObject(with: Data(ls.out.utf8)) as? [[String: Any]] ?? []
                return rows.first { $0["name"] as? String == "far" }?["state"] as? String
            }
            @Sendable func label(of name: String, key: String = "io.plugboard.remote") async throws -> String? {
                let created = try await cli(["container", "create", "--rootfs", rootfs, "--name", name, "--", "true"])
                try #require(created.status == .exited(0), "\(created.err)")
                let inspect = try await cli(["container", "inspect", name])
                let object = try JSONSerialization.jsonObject(with: Data(inspect.out.utf8)) as? [String: Any]
                let labels = (object?["spec"] as? [String: Any])?["labels"] as? [String: Any] ?? object?["labels"] as? [String: Any]
                return labels?[key] as? String
            }
            let connect = "tcp://\(hosts.daemonAddress):7443"

            // Refusals first, each with its reason on both sides.
            try await checkTLSRefusals(connect: connect, certs: certs, daemon: started, netns: hosts.pluginNS, plugins: &plugins)

            // The real plugin, on the other host.
            let options = "provides=far.echo label=io.plugboard.remote:far"
            let far = try RemotePluginProcess.start(connect: connect, name: "far", options: options, tls: certs.client("far"), netns: hosts.pluginNS)
            plugins.append(far)
            try await waitUntilAsync(30, "far active") { try await farState() == "active" }
            let echo = try await cli(["call", "far.echo", "\"across\""])
            #expect(echo.status == .exited(0) && echo.out.contains("across"), "\(echo)")
            #expect(try await label(of: "before") == "far", "the remote plugin's container.create hook labelled the container")

            // A call in flight when the link is pulled fails (the connection is declared dead
            // within the liveness bound, not at the call's deadline), and the hook is withdrawn.
            let hangingErr = try PipeDescriptors.make()
            let hanging = try ProcessSpawner.spawn(SpawnOptions(
                executable: plugboard, arguments: ["call", "--timeout", "120s", "far.hang", "--socket", socket],
                environment: childEnvironment(["PATH": "/usr/bin:/bin"]), fileDescriptors: [2: hangingErr.writeEnd]
            ))
            close(hangingErr.writeEnd)
            let hangingLog = LogLines(fd: hangingErr.readEnd)
            try await waitUntilAsync(20, "the call in flight") {
                try await cli(["metrics"]).out.contains("plugboard_inflight_calls{plugin=\"far\"} 1")
            }
            try await hosts.setDaemonLink(up: false)
            let status = try await withDeadline(30, "the in-flight call to fail after the link went down") { await hanging.waitForExit() }
            #expect(status != .exited(0))
            let said = try await withDeadline(10, "the failed call's message") { await hangingLog.waitFor("Error") }
            #expect(said?.contains("plugin far went away: its connection from \(hosts.pluginAddress)") == true && said?.contains("routing.owner-gone") == true, "\(String(describing: said))")
            try await waitUntilAsync(20, "far away") { try await farState() == "away" }
            let hooks = try await cli(["hooks"])
            #expect(!hooks.out.contains("far"), "the hook is withdrawn: \(hooks.out)")
            #expect(try await label(of: "while-away") == nil, "no remote hook ran while the link was down")

            // Plugged back: the plugin reconnects by itself and registers again.
            try await hosts.setDaemonLink(up: true)
            try await waitUntilAsync(40, "far active again") { try await farState() == "active" }
            #expect(try await label(of: "after") == "far")
            #expect(try await cli(["call", "far.echo", "\"back\""]).out.contains("back"))

            // A Python SDK plugin on the same host: it serves its job and labels containers
            // through its hook; the link pulled, it is away and its hook withdrawn; plugged
            // back, it connects again by itself (keepalive ends its dead connection).
            @Sendable func pyFarState() async throws -> String? {
                let ls = try await cli(["plugin", "ls", "--format", "json"])
                let rows = try JSONSerialization.jsonObject(with: Data(ls.out.utf8)) as? [[String: Any]] ?? []
                return rows.first { $0["name"] as? String == "py-far" }?["state"] as? String
            }
            let python = try RemotePluginProcess.start(
                connect: connect, name: nil, options: "", tls: certs.client("py-far"), netns: hosts.pluginNS,
                command: [try pythonVenvForTests(), repositoryRoot + "/Tests/EngineTests/Fixtures/remote_python_plugin.py"],
                environment: ["PYTHONPATH": repositoryRoot + "/sdk/python"]
            )
            plugins.append(python)
            try await waitUntilAsync(60, "py-far active") { try await pyFarState() == "active" }
            let pyEcho = try await cli(["call", "py-far.echo", "\"from python\""])
            #expect(pyEcho.status == .exited(0) && pyEcho.out.contains("from python"), "\(pyEcho)")
            #expect(try await label(of: "py-before", key: "io.plugboard.remote-py") == "py-far", "the Python plugin's hook labelled the container")
            try await hosts.setDaemonLink(up: false)
            try await waitUntilAsync(30, "py-far away") { try await pyFarState() == "away" }
            #expect(try await label(of: "py-while-away", key: "io.plugboard.remote-py") == nil, "no Python hook ran while the link was down")
            try await hosts.setDaemonLink(up: true)
            try await waitUntilAsync(60, "py-far active again") { try await pyFarState() == "active" }
            #expect(try await label(of: "py-after", key: "io.plugboard.remote-py") == "py-far")
        } catch {
            for p in plugins { await p.kill() }
            if let daemon { daemon.process.signal(SIGKILL); _ = await daemon.process.waitForExit() }
            await hosts.remove()
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
        for p in plugins { await p.kill() }
        if let daemon {
            daemon.process.signal(SIGTERM)
            _ = try? await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() }
        }
        await hosts.remove()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// An expired certificate, one from another CA, and one whose name is not allowed: each is
/// refused, and the plugin and the daemon each say why.
func checkTLSRefusals(connect: String, certs: TestCertificates, daemon: Daemon, netns: String?, plugins: inout [RemotePluginProcess]) async throws {
    let expired = try RemotePluginProcess.start(connect: connect, name: "far", options: "provides=far.echo", tls: certs.client("far-expired"), netns: netns)
    plugins.append(expired)
    let expiredSaid = try await withDeadline(20, "the expired certificate's refusal (plugin)") { await expired.log.waitFor("cannot connect") }
    #expect(expiredSaid?.lowercased().contains("expired") == true, "\(expired.log.all)")
    let expiredLogged = try await withDeadline(20, "the expired certificate's refusal (daemon)") { await daemon.log.waitFor("has expired") }
    #expect(expiredLogged?.contains("refused during the TLS handshake") == true, "\(String(describing: expiredLogged))")
    await expired.kill()

    let foreign = try RemotePluginProcess.start(connect: connect, name: "far", options: "provides=far.echo", tls: certs.client("far-foreign"), netns: netns)
    plugins.append(foreign)
    let foreignSaid = try await withDeadline(20, "the foreign certificate's refusal (plugin)") { await foreign.log.waitFor("cannot connect") }
    #expect(foreignSaid != nil, "\(foreign.log.all)")
    let foreignLogged = try await withDeadline(20, "the foreign certificate's refusal (daemon)") { await daemon.log.waitFor("is not signed by a CA in the CA bundle") }
    #expect(foreignLogged?.contains("some-other-ca") == true, "\(String(describing: foreignLogged))")
    await foreign.kill()

    let mallory = try RemotePluginProcess.start(connect: connect, name: "far", options: "provides=far.echo", tls: certs.client("mallory"), netns: netns)
    plugins.append(mallory)
    let mallorySaid = try await withDeadline(20, "mallory's refusal (plugin)") { await mallory.log.waitFor("refused") }
    #expect(mallorySaid?.contains("the client certificate names mallory, which may not connect as plugin far") == true, "\(mallory.log.all)")
    let malloryLogged = try await withDeadline(20, "mallory's refusal (daemon)") { await daemon.log.waitFor("remote plugin refused") }
    #expect(malloryLogged?.contains("mallory") == true, "\(String(describing: malloryLogged))")
    await mallory.kill()
}
