import Chan
import Logging
import Spawn

/// What the kit announces in its HELLO, as plugboardd would (1 MiB frames, 256 KiB window).
struct KitLimits: Sendable {
    var protocolVersion: Int64 = 1
    var maxFrame = 1 << 20
    var window = 262_144
    /// Grant credit on a channel only once the plugin has used up its credit there and sent
    /// nothing on it for a moment (`flow.window`): a plugin that sends past its credit is
    /// caught, instead of being covered by credit granted the instant its data arrived.
    var deferCredit = false
}

/// How a call the kit made came out.
enum CallOutcome: Sendable, CustomStringConvertible {
    /// `{"ok": value}`.
    case ok(Value)
    /// `{"error": {"code", "message"}}`.
    case error(code: String, message: String)
    /// A reply of neither shape.
    case badReply(Value)
    /// The plugin closed the reply channel without a reply.
    case noReply
    /// The plugin reset the reply channel.
    case reset(String)
    /// The session ended first.
    case sessionEnded(String)
    /// No answer in time.
    case timedOut(Duration)
    /// The kit could not even send the call: the plugin gave no credit.
    case noCredit(Duration)

    var description: String {
        switch self {
        case .ok(let v): return "answered {\"ok\": \(v.brief)}"
        case .error(let code, let message): return "answered with error \(code): \(message)"
        case .badReply(let v): return "answered with \(v.brief), which is neither {\"ok\": ...} nor {\"error\": {\"code\", \"message\"}}"
        case .noReply: return "closed the reply channel without answering"
        case .reset(let reason): return "reset the reply channel (\(reason))"
        case .sessionEnded(let how): return "ended the session before answering (\(how))"
        case .timedOut(let d): return "did not answer within \(d.inSeconds)"
        case .noCredit(let d): return "gave the kit no credit to send the call for \(d.inSeconds)"
        }
    }

    /// A well-formed answer, ok or error.
    var isAnswer: Bool {
        switch self {
        case .ok, .error: return true
        default: return false
        }
    }
}

/// A reply as it arrived.
struct Reply: Sendable {
    var outcome: CallOutcome
    /// It came in a DATA frame without `fin` = true.
    var withoutFin = false
    /// Channel references it carried (the kit closed them).
    var references: [(type: Int8, id: UInt64)] = []
}

/// The kit's end of one session with the plugin: the engine's role, played frame by frame.
///
/// It reads every frame the plugin sends and checks it against PROTOCOL.md (framing,
/// values, frame shapes, channel ids, flow control), records every rule the plugin breaks,
/// grants credit as the Swift receiver does, answers the engine calls the plugin makes
/// (see ``EngineStandIn``) and closes the channel ends it does not use.
actor KitSession {
    let run: PluginUnderTest
    let limits: KitLimits
    let logger: Logger

    // The plugin's HELLO.
    private(set) var helloValue: Value?
    private(set) var helloProblems: [String] = []
    private(set) var pluginName = "plugin"
    private(set) var pluginMaxFrame = 1 << 20
    private(set) var pluginWindow = 1024
    private(set) var declaration: Value = .map([])
    private(set) var kitHelloSent = false
    private(set) var helloBeforeKitHello = false

    // How the session went.
    private(set) var violations: [String] = []
    private(set) var goaway: String?
    private(set) var endOfInput = false
    private(set) var framingBroken = false
    private(set) var framesAfterGoaway: [String] = []
    private(set) var largestFrame = 0
    private(set) var oversizedFrames: [Int] = []
    private(set) var dataFrames = 0
    private(set) var creditsFromPlugin = 0
    private(set) var engineRequests: [String] = []

    private var buffer: [UInt8] = []
    private var nextKitId: UInt64 = 1
    private var highestPluginId: UInt64 = 0

    private enum Role { case reply, engine, other }
    private struct Inbound {
        var role: Role
        var credit: Int
        var uncredited = 0
        var received = 0
        var granted = 0
        var lastData = ContinuousClock.now
    }
    /// Channels whose sender the plugin holds.
    private var inbound: [UInt64: Inbound] = [:]
    /// Channels whose sender the kit holds: the credit the plugin gave.
    private var outbound: [UInt64: Int] = [:]
    /// Channels the plugin ended (CLOSE, RESET or fin), by id.
    private(set) var endedByPlugin: [UInt64: String] = [:]
    private var replies: [UInt64: Reply] = [:]
    private var callsChannel: UInt64?
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var reader: Task<Void, Never>?
    private var ticker: Task<Void, Never>?

    init(run: PluginUnderTest, limits: KitLimits, logger: Logger) {
        self.run = run
        self.limits = limits
        self.logger = logger
    }

    /// Starts reading the plugin's frames.
    func begin() {
        let output = run.output
        reader = Task { [weak self] in
            for await chunk in output {
                guard let self else { return }
                await self.ingest(chunk)
            }
            await self?.inputEnded()
        }
        ticker = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(20))
                await self?.wake()
            }
        }
    }

    /// Stops reading and ends the plugin (end of file, then `grace`, then SIGKILL).
    func finish(grace: Duration) async -> ExitStatus {
        let status = await run.stop(grace: grace)
        ticker?.cancel()
        await ticker?.value
        reader?.cancel()
        await reader?.value
        wake()
        return status
    }

    // MARK: waiting

    private func wake() {
        if limits.deferCredit { grantDeferred() }
        let woken = waiters
        waiters = []
        for waiter in woken { waiter.resume() }
    }

    /// With ``KitLimits/deferCredit``: grants what was consumed on each channel whose sender
    /// has no credit left and has been quiet for 100 ms (it waits for credit, as it must).
    private func grantDeferred() {
        let now = ContinuousClock.now
        for (id, channel) in inbound where channel.uncredited > 0 && channel.credit <= 0 && now - channel.lastData >= .milliseconds(100) {
            send(.credit(id: id, bytes: UInt64(channel.uncredited)))
            inbound[id]?.credit += channel.uncredited
            inbound[id]?.granted += channel.uncredited
            inbound[id]?.uncredited = 0
        }
    }

    /// The credit the plugin gave the kit on its calls channel (the window before any call).
    var callsCredit: Int { callsChannel.flatMap { outbound[$0] } ?? pluginWindow }

    /// Waits until `condition` holds or `timeout` passes; whether it holds.
    @discardableResult
    func wait(_ timeout: Duration, until condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            if ContinuousClock.now >= deadline || Task.isCancelled { return false }
            await withCheckedContinuation { waiters.append($0) }
        }
        return true
    }

    /// The session is over: GOAWAY, end of file, or bytes the kit cannot frame.
    var isOver: Bool { goaway != nil || endOfInput || framingBroken }

    /// How it ended, for a report.
    var howItEnded: String {
        if let goaway { return "GOAWAY \"\(goaway)\"" }
        if framingBroken { return "its bytes could not be framed" }
        if endOfInput { return "end of file on its fd 4, without a GOAWAY" }
        return "still open"
    }

    private func violation(_ text: String) {
        logger.debug("violation: \(text)")
        violations.append(text)
    }

    // MARK: sending

    /// Writes `frame` as it is.
    func send(_ frame: WireFrame) {
        do {
            run.write(try frame.encoded())
        } catch {
            violation("(kit) could not encode \(frame): \(error)")
        }
    }

    /// Writes raw bytes: hostile input.
    func sendRaw(_ bytes: [UInt8]) {
        run.write(bytes)
    }

    /// Sends the kit's HELLO.
    func sendHello(protocolVersion: Int64? = nil) {
        kitHelloSent = true
        send(.hello(.fields(
            ("protocol", .int(protocolVersion ?? limits.protocolVersion)), ("name", "plugboardd"),
            ("max_frame", .int(Int64(limits.maxFrame))), ("window", .int(Int64(limits.window))), ("meta", .map([]))
        )))
    }

    /// A fresh id from the kit's counter (odd).
    func allocate() -> UInt64 {
        defer { nextKitId += 2 }
        return nextKitId
    }

    /// The kit's calls channel, opened on first use as plugboardd does: `[1, 1, "calls"]`.
    func calls() -> UInt64 {
        if let callsChannel { return callsChannel }
        let id = allocate()
        send(.open(id: id, label: "calls"))
        outbound[id] = pluginWindow
        callsChannel = id
        return id
    }

    /// Sends DATA on a channel whose sender the kit holds, waiting up to `timeout` for
    /// credit as PROTOCOL.md's flow control says. False when no credit came.
    func sendData(on id: UInt64, _ value: Value, fin: Bool = false, timeout: Duration, rewrite: (@Sendable ([UInt8]) -> [UInt8])? = nil) async -> Bool {
        guard endedByPlugin[id] == nil else { return false }  // it closed its end: the send fails
        guard await wait(timeout, until: { (outbound[id] ?? 1) > 0 || isOver }), !isOver else { return false }
        let frame = WireFrame.data(id: id, value: value, fin: fin)
        guard var body = try? Msgpack.encode(frame.value) else { return false }
        if let rewrite { body = rewrite(body) }
        run.write(WireFrame.framed(body))
        if fin {
            outbound[id] = nil
        } else if let credit = outbound[id] {
            outbound[id] = credit - body.count
        }
        return true
    }

    /// Sends a request (a routing invocation) on the calls channel; the reply channel's id.
    /// `nil` when the plugin gave no credit within `timeout`.
    func startCall(_ invocation: Value, timeout: Duration, rewrite: (@Sendable ([UInt8]) -> [UInt8])? = nil) async -> UInt64? {
        let channel = calls()
        let reply = allocate()
        inbound[reply] = Inbound(role: .reply, credit: limits.window)
        let request: Value = .fields(("body", invocation), ("reply", .reference(0x50, reply)))
        guard await sendData(on: channel, request, timeout: timeout, rewrite: rewrite) else {
            inbound[reply] = nil
            return nil
        }
        return reply
    }

    /// Waits for the reply on `reply`.
    func awaitReply(_ reply: UInt64, timeout: Duration) async -> Reply {
        _ = await wait(timeout) { replies[reply] != nil || isOver }
        if let answer = replies.removeValue(forKey: reply) { return answer }
        if isOver { return Reply(outcome: .sessionEnded(howItEnded)) }
        return Reply(outcome: .timedOut(timeout))
    }

    /// Makes one call and waits for its reply.
    func call(_ invocation: Value, timeout: Duration) async -> Reply {
        guard let reply = await startCall(invocation, timeout: timeout) else {
            return Reply(outcome: isOver ? .sessionEnded(howItEnded) : .noCredit(timeout))
        }
        return await awaitReply(reply, timeout: timeout)
    }

    /// Abandons a call as plugboardd does when its deadline passes: the kit closes its
    /// end of the reply channel, and whatever the plugin sends on it later is dropped.
    func abandon(_ reply: UInt64) {
        inbound[reply] = nil
        send(.close(id: reply))
    }

    /// Sends a channel end the kit made: the kit keeps the other end.
    func makePipe(_ type: Int8) -> UInt64 {
        let id = allocate()
        switch type {
        case 0x50, 0x53: inbound[id] = Inbound(role: .other, credit: limits.window)  // the plugin sends
        default: outbound[id] = pluginWindow  // the kit sends
        }
        return id
    }

    /// Whether the kit's channel `id` is still open from the plugin's side.
    func pluginEnded(_ id: UInt64) -> Bool { endedByPlugin[id] != nil }

    // MARK: reading

    private func inputEnded() {
        endOfInput = true
        if !buffer.isEmpty && !framingBroken {
            violation("its output ended inside a frame (\(buffer.count) bytes of an unfinished frame)")
        }
        wake()
    }

    private func ingest(_ chunk: [UInt8]) {
        guard !framingBroken else { return }
        buffer += chunk
        var start = 0
        while buffer.count - start >= 4 {
            let length = Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
            if length == 0 {
                violation("sent a frame with a length prefix of 0")
                framingBroken = true
                break
            }
            if length > limits.maxFrame {
                oversizedFrames.append(length)
                violation("sent a frame of \(length) bytes, over the max_frame of \(limits.maxFrame) the kit announced in its HELLO")
                framingBroken = true
                break
            }
            guard buffer.count - start - 4 >= length else { break }
            let body = Array(buffer[(start + 4)..<(start + 4 + length)])
            start += 4 + length
            largestFrame = max(largestFrame, length)
            frame(body)
        }
        buffer.removeFirst(start)
        wake()
    }

    private func frame(_ body: [UInt8]) {
        let value: Value
        do {
            value = try Msgpack.decodeKeepingReferences(body, limits: DecodingLimits(maxFrameSize: limits.maxFrame)).value
        } catch {
            violation("sent a malformed frame: \(error)")
            return
        }
        let frame: WireFrame
        do {
            frame = try WireFrame.parse(value)
        } catch {
            violation("sent \(error)")
            return
        }
        if goaway != nil {
            framesAfterGoaway.append("\(frame)")
            return
        }
        if helloValue == nil {
            switch frame {
            case .hello(let map): hello(map)
            case .goaway(let reason): goaway = reason
            default: violation("sent \(frame) before its HELLO; the HELLO must be the first frame")
            }
            return
        }
        switch frame {
        case .hello: violation("sent a second HELLO")
        case .open(let id, let label): open(id, label)
        case .data(let id, let value, let fin): data(id, value, fin: fin, size: body.count)
        case .close(let id), .reset(let id, _):
            endedByPlugin[id] = "\(frame)"
            if inbound[id]?.role == .reply, replies[id] == nil {
                if case .reset(_, let reason) = frame {
                    replies[id] = Reply(outcome: .reset(reason))
                } else {
                    replies[id] = Reply(outcome: .noReply)
                }
            }
            inbound[id] = nil
            outbound[id] = nil
        case .credit(let id, let bytes):
            creditsFromPlugin += 1
            if let credit = outbound[id] {
                outbound[id] = Int(min(Int64(credit) + Int64(min(bytes, UInt64(Int64.max / 2))), Int64.max / 2))
            }
        case .goaway(let reason): goaway = reason
        }
    }

    private func hello(_ map: Value) {
        helloValue = map
        helloBeforeKitHello = !kitHelloSent
        guard case .map = map else {
            helloProblems.append("its HELLO carries \(map.brief), not a map")
            return
        }
        switch map["protocol"] {
        case .int(1)?: break
        case .int(let n)?: helloProblems.append("its HELLO says protocol \(n); this kit (and plugboardd) speaks 1")
        case let other?: helloProblems.append("its HELLO's \"protocol\" is \(other.brief), not an integer")
        case nil: helloProblems.append("its HELLO has no \"protocol\"")
        }
        if let name = map["name"] {
            if let text = name.stringValue { pluginName = text } else { helloProblems.append("its HELLO's \"name\" is \(name.brief), not a string") }
        }
        switch map["max_frame"]?.intValue {
        case let n? where n >= 64 && n <= 0xFFFF_FFFF: pluginMaxFrame = Int(n)
        case let n?: helloProblems.append("its HELLO's max_frame is \(n), outside 64 ... 4294967295")
        case nil: helloProblems.append("its HELLO has no integer \"max_frame\" (\(map["max_frame"]?.brief ?? "missing"))")
        }
        switch map["window"]?.intValue {
        case let n? where n >= 1024: pluginWindow = Int(min(n, Int64(Int.max / 4)))
        case let n?: helloProblems.append("its HELLO's window is \(n), below the minimum of 1024")
        case nil: helloProblems.append("its HELLO has no integer \"window\" (\(map["window"]?.brief ?? "missing"))")
        }
        declaration = map["meta"] ?? .map([])
        if declaration.containsReference {
            helloProblems.append("its HELLO's meta holds a channel reference; references belong in DATA only")
        }
    }

    private func open(_ id: UInt64, _ label: String) {
        guard id % 2 == 0, id != 0, inbound[id] == nil, outbound[id] == nil else {
            violation("sent OPEN of channel \(id), which is not a fresh plugin channel id (the plugin's ids are even, never reused)")
            return
        }
        highestPluginId = max(highestPluginId, id)
        if label == "engine" {
            inbound[id] = Inbound(role: .engine, credit: limits.window)
        } else {
            // plugboardd closes every other channel a plugin opens at once.
            send(.close(id: id))
        }
    }

    private func data(_ id: UInt64, _ value: Value, fin: Bool, size: Int) {
        dataFrames += 1
        let references = value.channelReferences
        var fresh: [(type: Int8, id: UInt64)] = []
        for reference in references {
            if reference.id % 2 == 1 {
                violation("sent a channel reference (ext 0x\(String(reference.type, radix: 16))) to channel \(reference.id), an id only the kit allocates: channel ends cannot be forwarded")
            } else if reference.id == 0 || inbound[reference.id] != nil || outbound[reference.id] != nil {
                violation("sent a channel reference to channel \(reference.id), which is already open: ids are never reused")
            } else {
                highestPluginId = max(highestPluginId, reference.id)
                fresh.append(reference)
            }
        }
        guard var channel = inbound[id] else {
            if outbound[id] != nil {
                violation("sent DATA on channel \(id), whose sender the kit holds")
            } else if (id % 2 == 1 && id >= nextKitId) || (id % 2 == 0 && id > highestPluginId) || id == 0 {
                violation("sent DATA on unknown channel \(id)")
            }
            // A late frame: dropped; the ends inside are closed.
            for reference in fresh { send(.close(id: reference.id)) }
            return
        }
        if channel.credit <= 0 {
            violation("sent DATA on channel \(id) with no credit left: \(channel.received) bytes sent on it against the kit's window of \(limits.window) and \(channel.granted) bytes of CREDIT")
        }
        channel.credit -= size
        channel.received += size
        channel.lastData = ContinuousClock.now
        switch channel.role {
        case .reply:
            var reply = Reply(outcome: Self.outcome(value), withoutFin: !fin, references: fresh)
            if replies[id] != nil { reply.outcome = .badReply(value) }
            replies[id] = reply
            for reference in fresh { send(.close(id: reference.id)) }
            inbound[id] = nil
            if !fin { send(.close(id: id)) }
            return
        case .engine:
            let replyEnd = EngineStandIn.replyEnd(of: value)
            for reference in fresh where reference.id != replyEnd { send(.close(id: reference.id)) }
            engineRequest(value, replyEnd: replyEnd)
        case .other:
            for reference in fresh { send(.close(id: reference.id)) }
        }
        if fin {
            endedByPlugin[id] = "DATA \(id) with fin"
            inbound[id] = nil
            return
        }
        channel.uncredited += size
        if channel.uncredited >= limits.window / 2 && !limits.deferCredit {
            send(.credit(id: id, bytes: UInt64(channel.uncredited)))
            channel.credit += channel.uncredited
            channel.granted += channel.uncredited
            channel.uncredited = 0
        }
        inbound[id] = channel
    }

    private func engineRequest(_ message: Value, replyEnd: UInt64?) {
        guard let replyEnd else {
            violation("sent \(message.brief) on its engine channel, which is not a request {\"body\", \"reply\": <ext 0x50>}")
            return
        }
        let body = message["body"] ?? .nil
        let (summary, answer) = EngineStandIn.answer(body, grants: declaredCalls, plugin: pluginName)
        engineRequests.append(summary)
        outbound[replyEnd] = pluginWindow
        send(.data(id: replyEnd, value: answer, fin: true))
        outbound[replyEnd] = nil
    }

    /// The jobs and grants the plugin's declaration lists under `calls`.
    var declaredCalls: Set<String> {
        Set((declaration["calls"]?.arrayValue ?? []).compactMap(\.stringValue))
    }

    private static func outcome(_ value: Value) -> CallOutcome {
        guard case .map = value else { return .badReply(value) }
        if let ok = value["ok"] { return .ok(ok) }
        if let error = value["error"], let code = error["code"]?.stringValue, let message = error["message"]?.stringValue {
            return .error(code: code, message: message)
        }
        return .badReply(value)
    }
}

extension Value {
    /// Whether a channel reference (ext 0x50...0x53) is inside.
    var containsReference: Bool { !channelReferences.isEmpty }
}

extension Duration {
    /// "2 s", "0.5 s".
    var inSeconds: String {
        let (s, attoseconds) = components
        if attoseconds == 0 { return "\(s) s" }
        return "\(Double(s) + Double(attoseconds) / 1e18) s"
    }
}
