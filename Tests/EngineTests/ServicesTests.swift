#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import Spawn
import StateService
import Testing
import TestSupport

/// A Chan session to a daemon's admin socket, as the CLI opens it.
func adminSession(_ socket: String) async throws -> (Session, Sender) {
    let session = try await Session.connect(unixSocketPath: socket, configuration: .init(name: "test"), logger: quietLogger)
    try await session.start()
    return (session, try session.open(label: "admin"))
}

/// Subscribes to plugin lifecycle events on an admin session; returns the stream.
func pluginEvents(_ session: Session, _ admin: Sender, plugin: String) async throws -> Receiver {
    let (sink, events) = try session.makePipe()
    _ = try await admin.request(.fields(("command", "events"), ("sink", .channel(.sender(sink))), ("types", ["plugin.*"]), ("attributes", .fields(("plugin", .string(plugin))))), timeout: .seconds(10))
    return events
}

/// Waits for `plugin.active` with `restarts` (a call made before the engine has noticed a
/// crash races it and fails with ownerGone, so tests wait for the event instead).
func waitForActive(_ events: Receiver, restarts: Int64) async throws {
    try await withDeadline(30, "the plugin active again (restarts \(restarts))") {
        while let e = try await events.receive() {
            if e["type"] == "plugin.active", e["restarts"]?.intValue == restarts { return }
        }
        throw DeadlineExceeded(what: "the event stream ended")
    }
}

/// Calls a job through an admin channel.
func adminCall(_ channel: Sender, _ job: String, _ argument: Value) async throws -> Value {
    try await channel.request(.fields(("command", "call"), ("job", .string(job)), ("argument", argument)), timeout: .seconds(30))
}

/// Parses the Prometheus text exposition format strictly: every line is a comment
/// (`# HELP`, `# TYPE` with a known type) or a sample `name{label="value",...} number`; a
/// sample's family must have been typed first. Returns the samples by `name{labels}`.
func parseExposition(_ text: String) throws -> [String: Double] {
    struct Malformed: Error, CustomStringConvertible { let description: String }
    let name = #/[a-zA-Z_:][a-zA-Z0-9_:]*/#
    let sample = #/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})? ([-+]?(?:[0-9.]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))$/#
    var typed: Set<String> = []
    var samples: [String: Double] = [:]
    for line in text.split(separator: "\n") {
        if line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ")
            guard parts.count == 4, parts[2].wholeMatch(of: name) != nil, ["counter", "gauge", "histogram", "summary", "untyped"].contains(String(parts[3])) else {
                throw Malformed(description: "bad TYPE line: \(line)")
            }
            typed.insert(String(parts[2]))
        } else if line.hasPrefix("# HELP ") || line == "#" || line.hasPrefix("# ") {
            continue
        } else if let m = String(line).wholeMatch(of: sample) {
            let family = String(m.1)
            let base = ["_bucket", "_sum", "_count"].reduce(family) { f, suffix in f.hasSuffix(suffix) && typed.contains(String(f.dropLast(suffix.count))) ? String(f.dropLast(suffix.count)) : f }
            guard typed.contains(base) else { throw Malformed(description: "sample before its TYPE: \(line)") }
            let value = String(m.4)
            samples[family + String(m.2 ?? "")] = value == "+Inf" || value == "Inf" ? .infinity : Double(value) ?? .nan
        } else {
            throw Malformed(description: "not exposition format: \(line)")
        }
    }
    return samples
}

/// GET over a plain TCP socket (a real thread: the calls block).
func httpGet(port: Int, path: String) async throws -> String {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard connected == 0 else {
                close(fd)
                continuation.resume(throwing: DeadlineExceeded(what: "connect to 127.0.0.1:\(port): errno \(errno)"))
                return
            }
            var request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
            _ = send(fd, &request, request.count, 0)
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { break }
                all += buffer[0..<n]
            }
            close(fd)
            continuation.resume(returning: String(decoding: all, as: UTF8.self))
        }
    }
}

@Suite("services: events, state and metrics, under a real daemon", .serialized)
struct ServicesTests {
    let dir = "/tmp/plugboard-services-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    var socket: String { dir + "/admin.sock" }

    func start(_ extra: [String] = []) async throws -> Daemon {
        try await Daemon.startReady(socket: socket, stateDirectory: dir + "/state", extra)
    }

    func stop(_ daemon: Daemon) async throws {
        daemon.process.signal(SIGTERM)
        let status = try await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() }
        #expect(status == .exited(0))
    }

    @Test("events: a subscriber that never reads loses events with an exact count, in order; others get everything; plugins' events are attributed")
    func eventsAccounting() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let daemon = try await start()
        try await whileRunning(daemon) {
            let (slowSession, slowAdmin) = try await adminSession(socket)
            let (fastSession, fastAdmin) = try await adminSession(socket)
            defer { slowSession.close(reason: "done"); fastSession.close(reason: "done") }
            // Subscribed before anything is published: nothing can be missed.
            let (slowSink, slowEvents) = try slowSession.makePipe()
            #expect(try await adminCall(slowAdmin, "events.subscribe", .fields(("sink", .channel(.sender(slowSink))), ("types", ["test.*"]), ("buffer", 8))) == "subscribed")
            let (fastSink, fastEvents) = try fastSession.makePipe()
            #expect(try await adminCall(fastAdmin, "events.subscribe", .fields(("sink", .channel(.sender(fastSink))), ("types", ["test.*", "registration.added"]))) == "subscribed")

            // The fast subscriber reads as events come; the slow one is not read at all yet.
            let total = 300
            let fast = Task { () -> [Value] in
                var got: [Value] = []
                while got.filter({ $0["type"] == "test.tick" }).count < total, let e = try await fastEvents.receive() { got.append(e) }
                return got
            }
            // ~1 KB each, so the slow subscriber's channel window fills and its buffer overflows.
            let pad = String(repeating: "x", count: 1000)
            for i in 0..<total {
                _ = try await adminCall(fastAdmin, "events.publish", .fields(("type", "test.tick"), ("attributes", .fields(("n", .int(Int64(i))), ("pad", .string(pad))))))
            }
            let fastGot = try await withDeadline(30, "the fast subscriber's events") { try await fast.value }
            let ticks = fastGot.filter { $0["type"] == "test.tick" }
            #expect(ticks.map { $0["n"]?.intValue ?? -1 } == (0..<Int64(total)).map { $0 }, "all, in order")
            #expect(!fastGot.contains { $0["type"] == "events.lost" })
            #expect(ticks.allSatisfy { $0["source"] == "operator" })
            let seqs = ticks.compactMap { $0["seq"]?.uintValue }
            #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)

            // The slow one: events in order, and every missing one counted.
            let (delivered, lost) = try await withDeadline(30, "the slow subscriber's records") { () -> ([Int64], Int) in
                var delivered: [Int64] = []
                var lost = 0
                while delivered.count + lost < total, let record = try await slowEvents.receive() {
                    if record["type"] == "events.lost" { lost += Int(record["count"]?.intValue ?? 0) } else { delivered.append(record["n"]?.intValue ?? -1) }
                }
                return (delivered, lost)
            }
            #expect(delivered.count + lost == total, "delivered \(delivered.count) + lost \(lost)")
            #expect(lost > 0, "a subscriber that never read must have lost some")
            #expect(delivered == delivered.sorted() && Set(delivered).count == delivered.count)

            // Engine events flow too, and the engine's types cannot be forged.
            _ = try await fastAdmin.request(.fields(("command", "plugin.add"), ("name", "late"), ("exec", .string(try builtExecutable("plugboard-test-plugin")))), timeout: .seconds(30))
            let registration = try await withDeadline(30, "registration.added") {
                while let e = try await fastEvents.receive() { if e["type"] == "registration.added" { return e } }
                return Value.nil
            }
            #expect(registration["plugin"] == "late")
            await #expect(throws: ChanError.self) {
                _ = try await adminCall(fastAdmin, "events.publish", .fields(("type", "plugin.active"), ("attributes", .fields(("plugin", "fake")))))
            }
        }
        try await stop(daemon)
    }

    @Test("state: a plugin's namespace survives its crash and restart; another plugin needs a grant to read it")
    func statePerPlugin() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await start(["--plugin-exec", "p=\(plugin)", "--plugin-exec", "q=\(plugin)"])
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            func through(_ plugin: String, _ job: String, _ argument: Value) async throws -> Value {
                try await adminCall(admin, plugin + ".call", .fields(("job", .string(job)), ("argument", argument)))
            }
            let put = try await through("p", "state.put", .fields(("key", "cursor"), ("value", .fields(("at", 42)))))
            #expect(put["version"] == 1)
            // Compare-and-set: a stale version is refused, naming both versions.
            await #expect {
                _ = try await through("p", "state.put", .fields(("key", "cursor"), ("value", 1), ("version", 0)))
            } throws: { "\($0)".contains("expected version 0, the current version is 1") }

            let lifecycle = try await pluginEvents(session, admin, plugin: "p")
            _ = try? await adminCall(admin, "p.crash", .nil)
            try await waitForActive(lifecycle, restarts: 1)
            #expect(try await adminCall(admin, "p.restarts", .nil) == 1, "p came back")
            let got = try await through("p", "state.get", .fields(("key", "cursor")))
            #expect(got["value"]?["at"] == 42 && got["version"] == 1 && got["found"] == true)

            // q reads its own namespace by default, and p's only with a grant.
            #expect(try await through("q", "state.get", .fields(("key", "cursor")))["found"] == false)
            await #expect {
                _ = try await through("q", "state.get", .fields(("key", "cursor"), ("namespace", "p")))
            } throws: { "\($0)".contains("plugin q may not use the state of p") }
            _ = try await admin.request(.fields(("command", "plugin.grant"), ("name", "q"), ("jobs", ["state:p"])), timeout: .seconds(10))
            #expect(try await through("q", "state.get", .fields(("key", "cursor"), ("namespace", "p")))["value"]?["at"] == 42)
            // An operator names the namespace.
            let listed = try await adminCall(admin, "state.list", .fields(("namespace", "p")))
            #expect(listed.arrayValue?.map { $0["key"] } == ["cursor"])
        }
        try await stop(daemon)
    }

    @Test("state: kill -9 of plugboardd in the middle of a write loop loses no acknowledged write and corrupts nothing")
    func stateSurvivesKill() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let daemon = try await start()
        let acknowledged = NIOLockedValueBox<[Int]>([])
        let enough = Signal()
        let writer = Task {
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            var i = 0
            while true {
                do {
                    _ = try await adminCall(admin, "state.put", .fields(("namespace", "loop"), ("key", .string("k\(i)")), ("value", .int(Int64(i)))))
                } catch {
                    return  // the daemon is gone
                }
                let count = acknowledged.withLockedValue { $0.append(i); return $0.count }
                if count == 200 { enough.fire() }
                i += 1
            }
        }
        try await withDeadline(60, "200 acknowledged writes") { await enough.wait() }
        daemon.process.signal(SIGKILL)
        _ = await daemon.process.waitForExit()
        try await withDeadline(30, "the writer to notice") { _ = try await writer.value }
        let acked = acknowledged.withLockedValue { $0 }
        #expect(acked.count >= 200)

        let again = try await start()
        try await whileRunning(again) {
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            let listed = try await adminCall(admin, "state.list", .fields(("namespace", "loop"), ("limit", 1_000_000)))
            var stored: [String: Int64] = [:]
            for e in listed.arrayValue ?? [] { if let k = e["key"]?.stringValue { stored[k] = e["value"]?.intValue } }
            let missing = acked.filter { stored["k\($0)"] != Int64($0) }
            #expect(missing.isEmpty, "acknowledged but missing after kill -9: \(missing.prefix(10))")
        }
        try await stop(again)
        let store = try StateStore(path: dir + "/state/state.sqlite")
        #expect(try await store.integrityCheck() == "ok")
        #expect(try await store.journalMode() == "wal")
    }

    @Test("the exposition parser the metrics test relies on refuses what is not exposition format")
    func expositionParser() throws {
        #expect(try parseExposition("# TYPE a_total counter\na_total{x=\"1\"} 3\n")[#"a_total{x="1"}"#] == 3)
        #expect(throws: (any Error).self) { try parseExposition("a_total 3\n") }  // no TYPE first
        #expect(throws: (any Error).self) { try parseExposition("# TYPE a counter\na{x=1} 3\n") }  // unquoted label
        #expect(throws: (any Error).self) { try parseExposition("# TYPE a counter\na three\n") }
        #expect(throws: (any Error).self) { try parseExposition("# TYPE a countr\n") }
    }

    @Test("metrics: the text parses as Prometheus exposition, and the counts match the calls made, by CLI and over HTTP")
    func metricsMatchCalls() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let daemon = try await start(["--plugin", "echo", "--plugin-exec", "p=\(try builtExecutable("plugboard-test-plugin"))", "--metrics-listen", "127.0.0.1:0"])
        try await whileRunning(daemon) {
            let listening = try #require(daemon.log.all.first { $0.contains("metrics listening") })
            let port = try #require(listening.firstMatch(of: #/127\.0\.0\.1:([0-9]+)/#).flatMap { Int($0.1) })
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            for i in 0..<25 { #expect(try await adminCall(admin, "echo", .int(Int64(i))) == .int(Int64(i))) }
            for _ in 0..<3 { _ = try? await adminCall(admin, "state.get", .fields(("key", "k"))) }  // no namespace: an error
            _ = try? await admin.request(.fields(("command", "call"), ("job", "p.hang"), ("argument", .nil), ("timeout_ms", 200)), timeout: .seconds(10))
            let lifecycle = try await pluginEvents(session, admin, plugin: "p")
            _ = try? await adminCall(admin, "p.crash", .nil)
            try await waitForActive(lifecycle, restarts: 1)
            #expect(try await adminCall(admin, "p.restarts", .nil) == 1)

            let cli = try await runCommand(try builtExecutable("plugboard"), ["metrics", "--socket", socket])
            #expect(cli.status == .exited(0), "\(cli.err)")
            let samples = try parseExposition(cli.out)
            #expect(samples[#"plugboard_calls_total{job="echo",plugin="echo"}"#] == 25)
            #expect(samples[#"plugboard_call_duration_seconds_count{job="echo",plugin="echo"}"#] == 25)
            #expect(samples[#"plugboard_call_errors_total{job="state.get",plugin="state",code="routing.handler-failed"}"#] == 3)
            #expect(samples[#"plugboard_call_timeouts_total{job="p.hang",plugin="p"}"#] == 1)
            #expect(samples[#"plugboard_plugin_restarts_total{plugin="p"}"#] == 1)
            #expect(samples[#"plugboard_plugins{state="active"}"#] == 5, "echo, events, metrics, p, state")

            let http = try await withDeadline(30, "GET /metrics") { try await httpGet(port: port, path: "/metrics") }
            #expect(http.hasPrefix("HTTP/1.1 200"), "\(http.prefix(100))")
            let body = String(http[http.range(of: "\r\n\r\n")!.upperBound...])
            #expect(try parseExposition(body)[#"plugboard_calls_total{job="echo",plugin="echo"}"#] == 25)
            #expect(try await httpGet(port: port, path: "/other").hasPrefix("HTTP/1.1 404"))
        }
        try await stop(daemon)
    }
}
