#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import Foundation
import Spawn
import Testing
import TestSupport

/// The directory the package's executables were built in.
private func binDirectory() throws -> String {
    (try builtExecutable("plugboardd") as NSString).deletingLastPathComponent
}

/// Starts `executable` (a plugboardd) with `arguments` and exactly `environment`, its stderr
/// followed line by line, and waits (with a deadline) until it says it is ready.
private func startReady(_ executable: String, _ arguments: [String], environment: [String: String]) async throws -> Daemon {
    let err = try PipeDescriptors.make()
    let process = try ProcessSpawner.spawn(SpawnOptions(
        executable: executable, arguments: arguments, environment: childEnvironment(environment), fileDescriptors: [2: err.writeEnd]
    ))
    close(err.writeEnd)
    let daemon = Daemon(process: process, log: LogLines(fd: err.readEnd))
    let ready = try await withDeadline(60, "plugboardd ready") { await daemon.log.waitFor("plugboardd ready") }
    if ready == nil {
        process.signal(SIGKILL)
        _ = await process.waitForExit()
    }
    try #require(ready != nil, "plugboardd did not get ready; its log: \(daemon.log.all.suffix(8))")
    return daemon
}

/// Whether `path` is a regular file with mode `mode`.
private func isFile(_ path: String, mode: mode_t) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFREG && info.st_mode & 0o7777 == mode
}

/// The plugboard-plugin-* executables Package.swift builds.
private func packagePluginNames() throws -> Set<String> {
    let manifest = try String(contentsOfFile: repositoryRoot + "/Package.swift", encoding: .utf8)
    let pattern = try NSRegularExpression(pattern: #"executableTarget\(name: "plugboard-plugin-([a-z0-9-]+)""#)
    let range = NSRange(manifest.startIndex..., in: manifest)
    return Set(pattern.matches(in: manifest, range: range).compactMap { Range($0.range(at: 1), in: manifest).map { String(manifest[$0]) } })
}

@Suite("install, discovery by name, sd_notify", .serialized)
struct InstallTests {
    let place = DaemonPlace("install")

    @Test("make install-files into a DESTDIR (PREFIX=/usr) puts each file in its place; the installed plugboardd finds host-mount by name in its own libexec, and the installed CLI shows it active")
    func installIntoDestdir() async throws {
        let dest = place.dir + "-destdir"
        defer { try? FileManager.default.removeItem(atPath: dest) }
        let bin = try binDirectory()
        let made = try await runCommand("/usr/bin/make", [
            "-C", repositoryRoot, "--no-print-directory", "install-files",
            "BIN_DIR=\(bin)", "DESTDIR=\(dest)", "PREFIX=/usr", "GENERATE_MANUAL=none",
        ])
        try #require(made.status == .exited(0), "make install-files failed: \(made.err)")
        let usr = dest + "/usr"
        for binary in ["plugboardd", "plugboard", "plugboard-sh", "plugboard-exec-shim"] {
            #expect(isFile(usr + "/bin/" + binary, mode: 0o755), "bin/\(binary)")
        }
        // Every plugin the package builds is installed under its discoverable name, and nothing else.
        let plugins = try packagePluginNames()
        #expect(plugins.isSuperset(of: ["echo", "host-mount", "containers", "local-volumes", "label"]), "\(plugins)")
        let installed = try FileManager.default.contentsOfDirectory(atPath: usr + "/libexec/plugboard/plugins")
        #expect(Set(installed) == Set(plugins.map { "plugboard-plugin-" + $0 }))
        for plugin in plugins { #expect(isFile(usr + "/libexec/plugboard/plugins/plugboard-plugin-" + plugin, mode: 0o755)) }
        let scripts = try FileManager.default.contentsOfDirectory(atPath: repositoryRoot + "/plugins/shell").filter { $0.hasSuffix(".sh") }
        #expect(!scripts.isEmpty)
        for script in scripts { #expect(isFile(usr + "/share/plugboard/shell/" + script, mode: 0o755), "\(script)") }
        let unit = try String(contentsOfFile: usr + "/lib/systemd/system/plugboardd.service", encoding: .utf8)
        for line in ["Type=notify", "ExecStart=/usr/bin/plugboardd", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "Delegate=yes"] {
            #expect(unit.split(separator: "\n").contains { $0 == line }, "the unit has no line \(line)")
        }
        #expect(!unit.contains("@PREFIX@"))
        #expect(isFile(usr + "/share/doc/plugboard/plugboard.toml.example", mode: 0o644))
        for binary in ["plugboardd", "plugboard", "plugboard-sh"] {
            for completion in ["bash-completion/completions/\(binary)", "zsh/site-functions/_\(binary)", "fish/vendor_completions.d/\(binary).fish"] {
                let text = (try? String(contentsOfFile: usr + "/share/" + completion, encoding: .utf8)) ?? ""
                #expect(text.contains(binary), "share/\(completion) is missing or empty")
            }
        }

        // From that PATH: the daemon's help, then the daemon with a plugin found by name.
        let environment = ["PATH": usr + "/bin:/usr/bin:/bin", "HOME": "/tmp"]
        let help = try await runCommand(usr + "/bin/plugboardd", ["--help"], environment: environment)
        #expect(help.status == .exited(0))
        #expect(help.out.contains("--plugin-exec"))
        let daemon = try await startReady(usr + "/bin/plugboardd", [
            "--admin-socket", place.socket, "--state-dir", place.dir + "-state", "--shutdown-grace", "1", "--plugin-exec", "host-mount",
            // The README's form, with the plugin's executable by its bare name: found in libexec too.
            "--plugin-exec", "logs=plugboard-plugin-host-mount /var/log /host/var/log",
        ], environment: environment)
        try await whileRunning(daemon) {
            let cli = usr + "/bin/plugboard"
            let list = try await runCommand(cli, ["plugin", "ls", "--socket", place.socket], environment: environment)
            let row = list.out.split(separator: "\n").first { $0.hasPrefix("host-mount ") }
            #expect(row?.contains(" exec ") == true && row?.contains(" active ") == true, "plugin ls: \(list.out) \(list.err)")
            let logs = list.out.split(separator: "\n").first { $0.hasPrefix("logs ") }
            #expect(logs?.contains(" active ") == true, "plugin ls: \(list.out)")
            let inspect = try await runCommand(cli, ["plugin", "inspect", "host-mount", "--socket", place.socket], environment: environment)
            #expect(inspect.out.contains("libexec\\/plugboard\\/plugins\\/plugboard-plugin-host-mount") || inspect.out.contains("libexec/plugboard/plugins/plugboard-plugin-host-mount"), "\(inspect.out)")
            let available = try await runCommand(cli, ["plugin", "ls", "--available"], environment: environment)
            #expect(available.status == .exited(0))
            let found = available.out.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
            #expect(found.contains(["host-mount", usr + "/libexec/plugboard/plugins/plugboard-plugin-host-mount"]), "\(available.out)")
            #expect(found.first == ["NAME", "PATH"])
            // The exec shim sits beside the installed plugboardd, where it looks for it.
            #expect(access(usr + "/bin/plugboard-exec-shim", X_OK) == 0)
        }
        daemon.process.signal(SIGTERM)
        let status = try await withDeadline(30, "plugboardd to exit") { await daemon.process.waitForExit() }
        #expect(status == .exited(0))
        try? FileManager.default.removeItem(atPath: place.dir)
        try? FileManager.default.removeItem(atPath: place.dir + "-state")
    }

    @Test(
        "make install-man writes plugboardd.1, plugboard.1 and plugboard-sh.1 with swift-argument-parser's generate-manual tool",
        .enabled(if: access((try? binDirectory()).map { $0 + "/generate-manual-tool" } ?? "", X_OK) == 0,
                 "no generate-manual tool in the build folder: `make man-tool` builds it (make test does)")
    )
    func manPages() async throws {
        let dest = place.dir + "-man"
        defer { try? FileManager.default.removeItem(atPath: dest) }
        let bin = try binDirectory()
        let made = try await runCommand("/usr/bin/make", [
            "-C", repositoryRoot, "--no-print-directory", "install-man", "BIN_DIR=\(bin)", "DESTDIR=\(dest)", "PREFIX=/usr",
        ])
        try #require(made.status == .exited(0), "make install-man failed: \(made.err)")
        for (page, option) in [("plugboardd", "admin-group"), ("plugboard", "socket"), ("plugboard-sh", "help")] {
            let path = dest + "/usr/share/man/man1/\(page).1"
            #expect(isFile(path, mode: 0o644), "\(path)")
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            #expect(text.hasPrefix(#".\" "Generated by swift-argument-parser""#), "\(text.prefix(80))")
            #expect(text.contains(".Dt \(page.uppercased()) 1") && text.contains(option), "\(page)")
        }
    }

    @Test("--plugin-exec NAME: PLUGBOARD_PLUGIN_PATH, then PATH, then ../libexec/plugboard/plugins, then the binary's directory, then /usr/libexec/plugboard/plugins; the first regular executable wins; ls --available shows that one")
    func searchOrder() async throws {
        let root = place.dir + "-search"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let explicit = root + "/explicit", path = root + "/path", bin = root + "/prefix/bin", libexec = root + "/prefix/libexec/plugboard/plugins"
        for dir in [explicit, path, bin, libexec, root + "/relative"] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        func plugin(_ dir: String, _ name: String, mode: mode_t = 0o755) {
            let file = dir + "/plugboard-plugin-" + name
            #expect(FileManager.default.createFile(atPath: file, contents: Data("#!/bin/sh\n".utf8)))
            chmod(file, mode)
        }
        plugin(explicit, "a"); plugin(path, "a"); plugin(libexec, "a"); plugin(bin, "a")
        plugin(path, "b"); plugin(libexec, "b")
        plugin(libexec, "c"); plugin(bin, "c")
        plugin(bin, "d")
        plugin(explicit, "e", mode: 0o644); plugin(path, "e")                  // not executable: passed over
        try FileManager.default.createDirectory(atPath: explicit + "/plugboard-plugin-f", withIntermediateDirectories: true)
        plugin(path, "f")                                                      // a directory: passed over
        plugin(root + "/relative", "g")                                        // only on a relative PATH entry
        let search = PluginSearchPath.standard(
            environment: ["PLUGBOARD_PLUGIN_PATH": explicit, "PATH": "relative::\(path)"], executableDirectory: bin
        )
        #expect(search.directories == [explicit, path, libexec, bin, "/usr/libexec/plugboard/plugins"])
        #expect(search.find("a") == explicit + "/plugboard-plugin-a")
        #expect(search.find("b") == path + "/plugboard-plugin-b")
        #expect(search.find("c") == libexec + "/plugboard-plugin-c")
        #expect(search.find("d") == bin + "/plugboard-plugin-d")
        #expect(search.find("e") == path + "/plugboard-plugin-e")
        #expect(search.find("f") == path + "/plugboard-plugin-f")
        #expect(search.find("g") == nil)
        #expect(search.find("../x") == nil)
        #expect(search.available().map(\.name) == ["a", "b", "c", "d", "e", "f"])
        #expect(search.available().first { $0.name == "c" }?.path == libexec + "/plugboard-plugin-c")
        for bare in ["echo", "host-mount", "a.b_c"] { #expect(PluginSearchPath.isBareName(bare)) }
        for command in ["", "./x", "/bin/x", "x y", "n=x", "\"x\"", "x\ty"] { #expect(!PluginSearchPath.isBareName(command), "\(command)") }

        // The CLI reads the same variables: run from a PATH of its own.
        let cli = try await runCommand(try builtExecutable("plugboard"), ["plugin", "ls", "--available", "--format", "json"],
                                       environment: ["PLUGBOARD_PLUGIN_PATH": explicit, "PATH": path])
        let rows = try JSONDecoder().decode([PluginSearchPath.Found].self, from: Data(cli.out.utf8))
        #expect(rows.first { $0.name == "a" }?.path == explicit + "/plugboard-plugin-a")
        #expect(rows.first { $0.name == "b" }?.path == path + "/plugboard-plugin-b")
        // Beside the CLI in the build folder: the package's own plugins (rule 4).
        #expect(rows.first { $0.name == "echo" }?.path == (try binDirectory()) + "/plugboard-plugin-echo")
    }

    @Test("--plugin-exec NAME that nothing provides stops plugboardd before it starts anything, naming where it looked")
    func unknownName() async throws {
        let result = try await runCommand(try builtExecutable("plugboardd"), [
            "--admin-socket", place.socket, "--state-dir", place.dir + "-state", "--plugin-exec", "no-such-plugin",
        ], environment: ["PATH": "/usr/bin:/bin"])
        try? FileManager.default.removeItem(atPath: place.dir)
        try? FileManager.default.removeItem(atPath: place.dir + "-state")
        #expect(result.status != .exited(0))
        #expect(result.err.contains("no executable plugboard-plugin-no-such-plugin in /usr/bin:/bin:"), "\(result.err)")
        #expect(result.err.contains("/usr/libexec/plugboard/plugins"))
        #expect(result.err.contains("PLUGBOARD_PLUGIN_PATH"))
        #expect(access(place.socket, F_OK) != 0, "the refused daemon made its socket")
    }

    @Test("sd_notify: READY=1 once the admin socket serves, STOPPING=1 at SIGTERM; plugins do not inherit NOTIFY_SOCKET")
    func notifyReadyAndStopping() async throws {
        let listener = try NotifyListener(path: place.dir + "-notify.sock")
        defer { listener.finish() }
        // echo by name: plugboard-plugin-echo beside the built plugboardd (the binary's directory).
        let daemon = try await startReady(try builtExecutable("plugboardd"), [
            "--admin-socket", place.socket, "--state-dir", place.dir + "-state", "--shutdown-grace", "1", "--plugin-exec", "echo",
        ], environment: ["PATH": "/usr/bin:/bin", "HOME": "/tmp", "NOTIFY_SOCKET": listener.name])
        try await whileRunning(daemon) {
            let ready = try await withDeadline(30, "READY=1") { await listener.waitFor("READY=1") }
            #expect(ready?.contains("STATUS=serving \(place.socket)") == true, "\(ready ?? "no datagram")")
            // Ready means served: the socket answers now.
            #expect(try await place.cli(["call", "echo", "1"]).status == .exited(0))
            let children = ProcessWatch.children(of: daemon.process.pid)
            try #require(children.count == 1, "one exec plugin: \(children)")
            let environ = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(children[0])/environ")).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            #expect(environ.contains("PLUGBOARD_PLUGIN_NAME=echo"), "\(environ)")
            #expect(!environ.contains { $0.hasPrefix("NOTIFY_SOCKET=") }, "the plugin inherited NOTIFY_SOCKET")
            #expect(listener.messages.filter { $0.contains("READY=1") }.count == 1)
            #expect(!listener.messages.contains { $0.contains("STOPPING=1") })
        }
        daemon.process.signal(SIGTERM)
        let stopping = try await withDeadline(30, "STOPPING=1") { await listener.waitFor("STOPPING=1") }
        #expect(stopping == "STOPPING=1")
        let status = try await withDeadline(30, "plugboardd to exit") { await daemon.process.waitForExit() }
        #expect(status == .exited(0))
        try? FileManager.default.removeItem(atPath: place.dir)
        try? FileManager.default.removeItem(atPath: place.dir + "-state")
    }

    @Test("sd_notify to an abstract socket (NOTIFY_SOCKET=@name)")
    func notifyAbstract() async throws {
        let listener = try NotifyListener(path: "@plugboard-test-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { listener.finish() }
        let daemon = try await startReady(try builtExecutable("plugboardd"), [
            "--admin-socket", place.socket, "--state-dir", place.dir + "-state", "--shutdown-grace", "1",
        ], environment: ["PATH": "/usr/bin:/bin", "HOME": "/tmp", "NOTIFY_SOCKET": listener.name])
        let ready = try await whileRunning(daemon) { try await withDeadline(30, "READY=1") { await listener.waitFor("READY=1") } }
        #expect(ready != nil)
        await place.stop(daemon)
    }
}

/// A unix datagram socket standing in for systemd's notification socket: a path, or an
/// abstract name when it starts with "@". A thread of its own receives the datagrams.
final class NotifyListener: @unchecked Sendable {
    let name: String
    private let fd: CInt
    private let lock = NIOLockCompat()
    private var received: [String] = []
    private var waiters: [(text: String, continuation: CheckedContinuation<String?, Never>)] = []
    private var ended = false

    init(path: String) throws {
        name = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno, path) }
        var address = NotifyListener.address(path)
        let rc = withUnsafePointer(to: &address.0) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, address.1) }
        }
        guard rc == 0 else {
            let saved = errno
            close(fd)
            throw SystemError("bind", errno: saved, path)
        }
        let socketFD = fd
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(socketFD, &buffer, buffer.count, 0)
                if n < 0 && errno == EINTR { continue }
                // An empty datagram (finish()) or an error ends it.
                if n <= 0 { break }
                add(String(decoding: buffer[0..<n], as: UTF8.self))
            }
            close(socketFD)
            end()
        }
    }

    static func address(_ name: String) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        return (address, socklen_t(2 + bytes.count + (abstract ? 0 : 1)))
    }

    private func add(_ message: String) {
        let ready: [CheckedContinuation<String?, Never>] = lock.withLock {
            received.append(message)
            let matching = waiters.filter { message.contains($0.text) }
            waiters.removeAll { message.contains($0.text) }
            return matching.map(\.continuation)
        }
        for c in ready { c.resume(returning: message) }
    }

    private func end() {
        let all = lock.withLock { () -> [CheckedContinuation<String?, Never>] in
            ended = true
            defer { waiters = [] }
            return waiters.map(\.continuation)
        }
        for c in all { c.resume(returning: nil) }
    }

    /// The first datagram containing `text` (already received or still to come).
    func waitFor(_ text: String) async -> String? {
        await withCheckedContinuation { c in
            let now: String?? = lock.withLock {
                if let m = received.first(where: { $0.contains(text) }) { return .some(m) }
                if ended { return .some(nil) }
                waiters.append((text, c))
                return .none
            }
            if let now { c.resume(returning: now) }
        }
    }

    var messages: [String] { lock.withLock { received } }

    /// Ends the receiving thread (an empty datagram to itself) and removes a path socket.
    func finish() {
        let sender = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if sender >= 0 {
            var address = NotifyListener.address(name)
            _ = withUnsafePointer(to: &address.0) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(sender, nil, 0, 0, $0, address.1) }
            }
            close(sender)
        }
        if !name.hasPrefix("@") { unlink(name) }
    }
}
