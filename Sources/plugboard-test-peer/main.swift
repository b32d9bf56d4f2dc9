// A Chan peer on fds 3/4 for the tests: it accepts channels and answers requests whose
// body names an operation. It exists to exercise the session against a real child
// process with real pipes; it is not a plugin (except in `replay` and `open-flood`, where
// plugboardd runs it as an exec plugin speaking the wire protocol by hand).
#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Logging

LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .info
    return handler
}
let logger = Logger(label: "plugboard-test-peer")
let mode = CommandLine.arguments.dropFirst().first ?? "serve"

/// Keeps values alive that a test wants held but never read (flow control).
actor Hoard {
    var items: [Value] = []
    func keep(_ v: Value) { items.append(v) }
}
let hoard = Hoard()

func handle(_ request: Request, session: Session) async throws {
    let op = request.body["op"]?.stringValue ?? "echo"
    switch op {
    case "echo":
        try await request.respond(request.body["value"] ?? .nil)
    case "fail":
        try await request.fail(code: "test.failure", message: request.body["message"]?.stringValue ?? "failed on purpose")
    case "crash":
        // Die mid-call, as a crashing plugin would.
        _exit(3)
    case "hang":
        await hoard.keep(.channel(.sender(request.reply)))
    case "drop-reply":
        break
    case "stream":
        let count = Int(request.body["bytes"]?.intValue ?? 0)
        let (writer, reader) = try session.makeByteStream()
        try await request.respond(.map([(key: "stream", value: .channel(.byteStreamReader(reader)))]))
        var sent = 0
        var chunk = [UInt8](repeating: 0, count: 60_000)
        while sent < count {
            let n = min(chunk.count, count - sent)
            for i in 0..<n { chunk[i] = UInt8(truncatingIfNeeded: sent + i) }
            try await writer.write(chunk[0..<n])
            sent += n
        }
        writer.close()
    case "upload":
        guard case .channel(.byteStreamReader(let reader))? = request.body["stream"] else {
            try await request.fail(code: "bad.request", message: "upload needs a stream")
            return
        }
        var count = 0
        var sum: UInt64 = 0
        while let chunk = try await reader.read() {
            count += chunk.count
            for b in chunk { sum &+= UInt64(b) }
        }
        try await request.respond(.map([(key: "count", value: .int(Int64(count))), (key: "sum", value: .int(Int64(sum)))]))
    case "drain":
        // Reads every message from a Receiver we were given and reports how many arrived, in order.
        guard case .channel(.receiver(let receiver))? = request.body["receiver"] else {
            try await request.fail(code: "bad.request", message: "drain needs a receiver")
            return
        }
        var values: [Value] = []
        for try await v in receiver { values.append(v) }
        try await request.respond(.array(values))
    case "hold":
        // Takes a Receiver and never reads it: the sender must stall on credit.
        guard let receiver = request.body["receiver"] else { return }
        await hoard.keep(receiver)
        try await request.respond("held")
    case "open":
        // Opens a channel from this side and sends three messages on it.
        let sender = try session.open(label: "from-peer")
        try await request.respond("opened")
        for i in 1...3 { try await sender.send(.int(Int64(i))) }
        sender.close()
    case "garbage":
        // No reply: the bytes below must be what the engine sees next on this session.
        await hoard.keep(.channel(.sender(request.reply)))
        var junk: [UInt8] = [0x00, 0x00, 0x00, 0x05, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1]
        _ = write(4, &junk, junk.count)
    default:
        try await request.fail(code: "unknown.op", message: "unknown op \(op)")
    }
}

/// `participant NAME`: answers routing invocations ({"kind", "name", "payload", "extra"})
/// the way a plugin will, with scripted behaviours the routing tests rely on.
func participate(_ request: Request, name: String) async throws {
    let kind = request.body["kind"]?.stringValue ?? ""
    let what = request.body["name"]?.stringValue ?? ""
    let payload = request.body["payload"] ?? .nil
    switch (kind, what) {
    case ("job", "echo"), ("job", name + ".echo"):
        try await request.respond(payload)
    case ("job", "whoami"):
        try await request.respond(.string(name))
    case ("job", "abort"):
        // Alive, but aborts this one reply.
        request.reply.reset(reason: "changed my mind")
    case ("job", "malformed"):
        // A reply that is neither {"ok"} nor {"error"}.
        try await request.reply.finish(with: .fields(("answer", 42)))
    case ("job", "hang"):
        await hoard.keep(.channel(.sender(request.reply)))
    case ("job", "count-bytes"):
        guard case .channel(.byteStreamReader(let reader))? = payload["stream"] else {
            try await request.fail(code: "bad.request", message: "count-bytes needs a stream")
            return
        }
        try await request.respond(.int(Int64(try await reader.readAll().count)))
    case ("job", "fail"):
        try await request.fail(code: "job.failed", message: "\(name) failed on purpose")
    case ("job", "crash"):
        _exit(7)
    case ("pipeline", _):
        // Appends our name to a string body and passes the message on; "split" also spawns a note.
        let text = payload.stringValue ?? ""
        var out: [Value] = [.fields(("type", .string(what)), ("body", .string(text + "|" + name)))]
        if text.contains("split") { out.append(.fields(("type", "note"), ("body", .string("from " + name)))) }
        try await request.respond(.array(out))
    case ("hook", _):
        let phase = request.body["extra"]?["phase"]?.stringValue ?? "mutate"
        if phase == "validate" {
            try await request.respond(payload["reject"] != nil ? .fields(("veto", .string("\(name) rejects"))) : .fields(("ok", true)))
            return
        }
        if payload["veto"] != nil {
            try await request.respond(.fields(("veto", .string("\(name) says no"))))
            return
        }
        if payload["hang"] != nil {
            await hoard.keep(.channel(.sender(request.reply)))
            return
        }
        // Adds NAME=1 to the payload's "env" list.
        var entries = payload.mapValue ?? []
        var env = payload["env"]?.arrayValue ?? []
        env.append(.string("\(name.uppercased())=1"))
        entries.removeAll { $0.key == "env" }
        entries.append((key: "env", value: .array(env)))
        try await request.respond(.fields(("payload", .map(entries))))
    default:
        try await request.fail(code: "unknown", message: "\(name) has no \(kind) \(what)")
    }
}

func serve() async throws {
    let participantName = mode == "participant" ? CommandLine.arguments.dropFirst(2).first : nil
    let session = try await Session.overFileDescriptors(
        read: 3, write: 4, role: .acceptor,
        configuration: .init(name: participantName ?? "test-peer"), logger: logger
    )
    try await session.start()
    try await withThrowingDiscardingTaskGroup { group in
        while let channel = try await session.accept() {
            group.addTask {
                while let request = try await channel.nextRequest() {
                    if let participantName {
                        Task { try await participate(request, name: participantName) }
                    } else {
                        Task { try await handle(request, session: session) }
                    }
                }
            }
        }
    }
}

/// `replay SEND_HEX EXPECT_HEX`: no session, raw bytes. Writes SEND to fd 4 at once, reads
/// fd 3 until as many bytes as EXPECT have come, says on stderr whether they match, then
/// holds the connection until the daemon closes it.
func replay(send: String, expect: String) -> Never {
    func bytes(_ hex: String) -> [UInt8] {
        let digits = hex.filter(\.isHexDigit)
        return stride(from: 0, to: digits.count - 1, by: 2).compactMap { i in
            let start = digits.index(digits.startIndex, offsetBy: i)
            return UInt8(digits[start..<digits.index(start, offsetBy: 2)], radix: 16)
        }
    }
    func say(_ text: String) {
        var line = Array((text + "\n").utf8)
        _ = write(2, &line, line.count)
    }
    var out = bytes(send)
    var written = 0
    while written < out.count {
        let n = out[written...].withUnsafeBytes { write(4, $0.baseAddress, $0.count) }
        if n <= 0 { say("replay: cannot write to fd 4 (errno \(errno))"); exit(1) }
        written += n
    }
    let expected = bytes(expect)
    var got: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while got.count < expected.count {
        let n = read(3, &buffer, buffer.count)
        if n <= 0 { break }
        got.append(contentsOf: buffer[0..<n])
    }
    if let i = zip(expected, got).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
        say("replay: mismatch at byte \(i): expected \(String(format: "%02x", expected[i])), got \(String(format: "%02x", got[i])); received \(got.map { String(format: "%02x", $0) }.joined(separator: " "))")
    } else if got.count < expected.count {
        say("replay: only \(got.count) of \(expected.count) bytes came: \(got.map { String(format: "%02x", $0) }.joined(separator: " "))")
    } else {
        say("replay: matched \(expected.count) bytes")
    }
    out = []
    while read(3, &buffer, buffer.count) > 0 {}
    exit(0)
}

/// `open-flood`: a hostile plugin of plugboardd (its HELLO carries its declaration: plugin
/// `flooder`, jobs `flooder.open-flood` and `flooder.nil-bomb`, calls `echo`).
///
/// Asked `flooder.open-flood` with `{"count": N}`, it opens N "engine" channels at once,
/// calls echo on the first, sorts the N into those the daemon kept and those it refused
/// (reset), closes the kept ones, calls echo once more on a fresh channel, and answers what
/// it saw: `{"opened", "accepted", "refused", "reasons": [distinct RESET reasons], "during", "after"}`.
///
/// Asked `flooder.nil-bomb` with `{"count": K, "nils": N}`, it calls its own slow job
/// `flooder.hold` (which never answers) K times through the daemon, each with an argument of
/// N nils (its own session does not refuse them, as a Swift one would), without waiting for
/// replies; it answers `{"sent", "held"}` once the daemon holds 32 of them (its limit of
/// engine calls in flight), or once its session is gone.
func openFlood() async throws {
    let declaration: Value = .fields(("name", "flooder"), ("jobs", ["flooder.open-flood", "flooder.nil-bomb", "flooder.hold"]), ("calls", ["echo", "flooder.hold"]))
    let session = try await Session.overFileDescriptors(
        read: 3, write: 4, role: .acceptor, configuration: .init(name: "flooder", maxValues: .max, meta: declaration), logger: logger
    )
    try await session.start()
    func flood(_ count: Int) async throws -> Value {
        var senders: [Sender] = []
        for _ in 0..<max(1, count) { senders.append(try session.open(label: "engine")) }
        // The daemon reads frames in order and answers a refused OPEN at once, so by the time
        // this reply is here every RESET for the OPENs before it is here too.
        let during = try await senders[0].request(.fields(("job", "echo"), ("argument", "during the flood")), timeout: .seconds(60))
        var kept: [Sender] = []
        var refused = 0
        var reasons: Set<String> = []
        for sender in senders {
            if let failure = sender.sendFailure {
                refused += 1
                reasons.insert(failure.reason.components(separatedBy: "aborted it: ").last ?? failure.reason)
            } else {
                kept.append(sender)
            }
        }
        let accepted = kept.count
        for sender in kept { sender.close() }
        kept = []
        senders = []
        let fresh = try session.open(label: "engine")
        let after = try await fresh.request(.fields(("job", "echo"), ("argument", "after the flood")), timeout: .seconds(60))
        fresh.close()
        return .fields(
            ("opened", .int(Int64(count))), ("accepted", .int(Int64(accepted))), ("refused", .int(Int64(refused))),
            ("reasons", .array(reasons.sorted().map { .string($0) })), ("during", during), ("after", after)
        )
    }
    /// `flooder.hold` invocations that arrived, each holding its reply (never answered).
    let holds = HoldCounter()
    func nilBomb(count: Int, nils: Int) async throws -> Value {
        let engine = try session.open(label: "engine")
        var pending: [PendingReply] = []
        for _ in 0..<count {
            // A call of its own slow job: the daemon holds each decoded request while it waits.
            pending.append(try await engine.startRequest(.fields(("job", "flooder.hold"), ("argument", .array([Value](repeating: .nil, count: nils)))), timeout: .seconds(100)))
        }
        // Done once the daemon holds as many as it will at once (32 engine calls in flight),
        // or once the session is gone.
        let held = await holds.wait(for: min(count, 32)) { session.closeReason != nil }
        return .fields(("sent", .int(Int64(pending.count))), ("held", .int(Int64(held))))
    }
    try await withThrowingDiscardingTaskGroup { group in
        // A plugin ends with its session: whatever is still waiting, the process exits once
        // the daemon has cut the session off (or closed it), as a real plugin would.
        group.addTask {
            let reason = await session.waitUntilClosed()
            logger.info("open-flood: session over (\(reason)); exiting")
            exit(0)
        }
        while let channel = try await session.accept() {
            group.addTask {
                // The daemon's calls, each on its own task: a nil bomb waits for holds.
                try await withThrowingDiscardingTaskGroup { calls in
                    while let request = try await channel.nextRequest() {
                        calls.addTask {
                            let payload = request.body["payload"] ?? .nil
                            do {
                                switch request.body["name"]?.stringValue {
                                case "flooder.open-flood":
                                    try await request.respond(try await flood(Int(payload["count"]?.intValue ?? 0)))
                                case "flooder.nil-bomb":
                                    try await request.respond(try await nilBomb(count: Int(payload["count"]?.intValue ?? 1), nils: Int(payload["nils"]?.intValue ?? 0)))
                                case "flooder.hold":
                                    await hoard.keep(.channel(.sender(request.reply)))
                                    await holds.add()
                                default:
                                    try await request.fail(code: "unknown", message: "flooder has flooder.open-flood, flooder.nil-bomb and flooder.hold")
                                }
                            } catch {
                                try? await request.fail(code: "flood.failed", message: "\(error)")
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Counts arrivals. A waiter looks on a short tick (a fixture's poll, not a test's): it must
/// also notice a dead session, whose holds never come, and stop when cancelled.
actor HoldCounter {
    private var count = 0
    func add() { count += 1 }
    func wait(for target: Int, orUntil gone: @Sendable () -> Bool) async -> Int {
        while count < target && !gone() && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return count
    }
}

if mode == "open-flood" {
    do {
        try await openFlood()
        exit(0)
    } catch {
        logger.error("open-flood stopping: \(error)")
        exit(1)
    }
}

if mode == "replay" {
    let args = Array(CommandLine.arguments.dropFirst(2))
    replay(send: args.first ?? "", expect: args.count > 1 ? args[1] : "")
}

do {
    try await serve()
} catch {
    logger.error("test peer stopping: \(error)")
    exit(1)
}
