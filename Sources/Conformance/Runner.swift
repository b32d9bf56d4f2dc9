import Chan
import Logging
import Routing
import Spawn

extension KitSession {
    /// Waits for the plugin's HELLO (or the end of the session).
    func waitForHello(_ timeout: Duration) async -> Bool {
        await wait(timeout) { helloValue != nil || isOver }
        return helloValue != nil
    }

    /// Waits for the session to end (GOAWAY, end of file).
    func waitForEnd(_ timeout: Duration) async -> Bool {
        await wait(timeout) { isOver }
    }

    /// Waits for the plugin to end channel `id` (CLOSE, RESET or fin).
    func waitForPluginEnd(of id: UInt64, _ timeout: Duration) async -> Bool {
        await wait(timeout) { endedByPlugin[id] != nil || isOver }
        return endedByPlugin[id] != nil
    }

    /// The first rule the plugin broke in this session, and how many more.
    var violationSummary: String? {
        guard let first = violations.first else { return nil }
        return violations.count == 1 ? first : "\(first) (and \(violations.count - 1) more: \(violations.dropFirst().prefix(2).joined(separator: "; ")))"
    }
}

/// Runs the cases one after another, each on a session of its own unless it only makes
/// calls (those share one session, restarted when the plugin ends it).
final class Runner {
    let options: ConformanceOptions
    let logger: Logger
    let onCase: @Sendable (CaseResult) -> Void
    private(set) var results: [CaseResult] = []
    private(set) var pluginName: String?
    private var declaration: Declaration?
    private var shared: KitSession?

    init(options: ConformanceOptions, logger: Logger, onCase: @escaping @Sendable (CaseResult) -> Void) {
        self.options = options
        self.logger = logger
        self.onCase = onCase
    }

    var timeout: Duration { options.timeout }
    var grace: Duration { options.grace }

    // MARK: sessions

    /// A fresh plugin process and the kit's session with it, HELLOs exchanged.
    func fresh(_ limits: KitLimits = KitLimits(), sendHello: Bool = true) async throws -> KitSession {
        let run: PluginUnderTest
        do {
            run = try await PluginUnderTest.start(options.command, echoStderr: options.showOutput, logger: logger)
        } catch {
            throw Failure("could not start \(options.command.commandLine.joined(separator: " ")): \(error)")
        }
        let session = KitSession(run: run, limits: limits, logger: logger)
        await session.begin()
        if sendHello { await session.sendHello() }
        if sendHello {
            guard await session.waitForHello(timeout) else {
                let how = await session.howItEnded
                let status = await session.finish(grace: .milliseconds(100))
                throw Failure("sent no HELLO within \(timeout.inSeconds) (\(how); process \(status))")
            }
        }
        return session
    }

    /// The session the calling cases share.
    func sharedSession() async throws -> KitSession {
        // A plugin that stopped granting credit has its own case (flow.credit): the other
        // calling cases go on in a fresh session rather than fail for it again.
        if let shared, await !shared.isOver, await shared.callsCredit > 0 { return shared }
        if let shared { _ = await shared.finish(grace: grace) }
        shared = nil
        let session = try await fresh()
        shared = session
        return session
    }

    /// Records one case.
    func record(_ result: CaseResult) {
        results.append(result)
        onCase(result)
    }

    /// Runs one case: its body returns a note on success, throws ``Failure`` or
    /// ``NotApplicable``. Rules the plugin broke on `session` fail the case too.
    func run(_ name: String, _ body: () async throws -> (String, KitSession?)) async {
        do {
            let (note, session) = try await body()
            if let session, let broken = await session.violationSummary {
                record(CaseResult(name: name, status: .fail, message: broken, output: session.run.stderrTail))
                return
            }
            record(CaseResult(name: name, status: .pass, message: note))
        } catch let failure as Failure {
            record(CaseResult(name: name, status: .fail, message: failure.message, output: lastOutput))
        } catch let skip as NotApplicable {
            record(CaseResult(name: name, status: .skip, message: skip.reason))
        } catch {
            record(CaseResult(name: name, status: .fail, message: "\(error)", output: lastOutput))
        }
    }

    private var lastOutput: [String] = []

    /// Ends a case's own session; its exit status.
    func end(_ session: KitSession) async -> ExitStatus {
        let status = await session.finish(grace: grace)
        lastOutput = session.run.stderrTail
        return status
    }

    /// Fails with `message` after ending the session (so its output is in the report).
    func fail(_ session: KitSession, _ message: String) async -> Failure {
        if let broken = await session.violationSummary {
            _ = await end(session)
            return Failure(broken)
        }
        _ = await end(session)
        return Failure(message)
    }

    // MARK: the run

    func runAll() async {
        await handshakeCases()
        guard let declaration else {
            record(CaseResult(name: "session", status: .fail, message: "no usable HELLO: the other cases were not run", output: lastOutput))
            return
        }
        await versionCase()
        await callCases(declaration)
        await echoCases(declaration)
        await limitsCase(declaration)
        await channelEndsCase(declaration)
        await lateReplyCase(declaration)
        await windowCase(declaration)
        await creditCase(declaration)
        if let shared { _ = await shared.finish(grace: grace) }
        shared = nil
        await hostileCases(declaration)
        await goawayCase(declaration)
        await endOfFileCase()
    }

    // MARK: handshake and declaration

    func handshakeCases() async {
        let session: KitSession
        do {
            session = try await fresh(sendHello: false)
        } catch {
            record(CaseResult(name: "handshake.hello", status: .fail, message: (error as? Failure)?.message ?? "\(error)"))
            return
        }
        // The kit holds its own HELLO back: the plugin must send its HELLO without waiting.
        let unprompted = await session.waitForHello(timeout)
        if !unprompted { await session.sendHello() }
        var arrived = unprompted
        if !arrived { arrived = await session.waitForHello(timeout) }
        let problems = await session.helloProblems
        let name = await session.pluginName
        if arrived { pluginName = name }
        await run("handshake.hello") {
            guard arrived else {
                let how = await session.howItEnded
                if await session.isOver {
                    let status = session.run.process.exitStatus.map { "; \($0)" } ?? ""
                    throw await fail(session, "ended the session without sending a HELLO (\(how)\(status))")
                }
                throw await fail(session, "sent no HELLO within \(timeout.inSeconds) of the kit's (\(how))")
            }
            if let first = problems.first { throw Failure(first + (problems.count > 1 ? "; " + problems.dropFirst().joined(separator: "; ") : "")) }
            let maxFrame = await session.pluginMaxFrame
            let window = await session.pluginWindow
            return ("\(name): max_frame \(maxFrame), window \(window)", session)
        }
        await run("handshake.unprompted") {
            guard arrived else { throw Failure("sent no HELLO at all") }
            guard unprompted else {
                throw Failure("sent its HELLO only after the kit's: each side sends its HELLO first, without waiting for the peer's")
            }
            return ("", nil)
        }
        // Make sure the plugin is well into the session before judging its declaration.
        let meta = await session.declaration
        await run("declaration") {
            guard arrived else { throw Failure("no HELLO, so no declaration") }
            let parsed = try Declaration(meta, givenName: options.command.name)
            declaration = parsed
            return (parsed.summary, nil)
        }
        if arrived && declaration == nil { declaration = Declaration.lenient(meta, name: name) }
        _ = await end(session)
    }

    func versionCase() async {
        await run("handshake.version") {
            let session = try await fresh(sendHello: false)
            await session.sendHello(protocolVersion: 2)
            guard await session.waitForEnd(timeout) else {
                throw await fail(session, "went on after the kit's HELLO said protocol 2: it must send a GOAWAY explaining the mismatch and close")
            }
            let goaway = await session.goaway
            let status = await end(session)
            guard let goaway else { throw Failure("closed the session without a GOAWAY explaining the protocol mismatch (process \(status))") }
            if case .signaled = status { throw Failure("sent GOAWAY \"\(goaway)\", then was \(status)") }
            return ("GOAWAY \"\(goaway)\"", nil)
        }
    }

    // MARK: calls

    /// The invocation for a registration, with the kit's payload or the user's input.
    func invocation(_ target: Target, padding: Int = 0) -> Value {
        var extra: [(key: Value, value: Value)] = []
        switch target.kind {
        case .hook(let phase):
            extra = [("phase", .string(phase)), ("object", "conformance-0001")]
            if phase == "validate" { extra.append(("attribution", .map([]))) }
        default: break
        }
        if padding > 0 { extra.append(("conformance.padding", .binary([UInt8](repeating: 0x2e, count: padding)))) }
        var fields: [(key: Value, value: Value)] = [
            ("kind", .string(target.kind.wireKind)), ("name", .string(target.name)),
            ("payload", options.inputs[target.name] ?? target.samplePayload),
        ]
        if !extra.isEmpty { fields.append(("extra", .map(extra))) }
        return .map(fields)
    }

    func callCases(_ declaration: Declaration) async {
        for target in declaration.targets {
            await run(target.caseName) {
                let session = try await sharedSession()
                let before = await session.engineRequests.count
                let reply = await session.call(invocation(target), timeout: timeout)
                if reply.withoutFin { throw Failure("answered in a DATA frame without fin = true: a reply is one DATA frame with fin = true") }
                let engine = await session.engineRequests.dropFirst(before)
                let calls = engine.isEmpty ? "" : "; it called the engine: \(engine.joined(separator: ", "))"
                switch reply.outcome {
                case .ok(let value):
                    if let problem = target.kind.problem(withAnswer: value) { throw Failure(problem) }
                    return ("answered \(value.brief)" + calls, session)
                case .error(let code, let message):
                    return ("answered with error \(code): \(message)" + calls, session)
                default:
                    throw Failure(reply.outcome.description)
                }
            }
        }
    }

    // MARK: echo

    func echoJob(_ declaration: Declaration) -> String? {
        if let chosen = options.echoJobs { return chosen.first }
        return declaration.jobs.first { $0 == "echo" || $0.hasSuffix(".echo") }
    }

    func echoCases(_ declaration: Declaration) async {
        guard let job = echoJob(declaration) else {
            let why = options.echoJobs == [] ? "--no-echo" : "no job echoes (none is named echo or *.echo; name one with --echo JOB)"
            record(CaseResult(name: "echo", status: .skip, message: why))
            return
        }
        for sample in EchoSamples.all {
            await run("echo.\(sample.name)") {
                let session = try await sharedSession()
                let call: Value = .fields(("kind", "job"), ("name", .string(job)), ("payload", sample.value))
                guard let reply = await session.startCall(call, timeout: timeout, rewrite: sample.rewrite) else {
                    throw Failure("gave no credit to send \(sample.name) values on")
                }
                let answer = await session.awaitReply(reply, timeout: timeout)
                if answer.withoutFin { throw Failure("answered without fin = true") }
                guard case .ok(let back) = answer.outcome else {
                    throw Failure("\(job) did not echo \(sample.what): it \(answer.outcome)")
                }
                if let difference = EchoSamples.difference(sent: sample.expected, got: back) {
                    throw Failure("\(job) changed \(sample.what): \(difference)")
                }
                return ("", session)
            }
        }
    }

    // MARK: limits

    func limitsCase(_ declaration: Declaration) async {
        await run("handshake.limits") {
            guard let job = echoJob(declaration) else { throw NotApplicable("no echo job to ask for a reply over the kit's max_frame") }
            var limits = KitLimits()
            limits.maxFrame = 65536
            let session = try await fresh(limits)
            let size = 100_000
            guard await session.pluginMaxFrame >= size + 200 else {
                _ = await end(session)
                throw NotApplicable("its max_frame is below \(size + 200) bytes")
            }
            let reply = await session.call(.fields(("kind", "job"), ("name", .string(job)), ("payload", .binary([UInt8](repeating: 1, count: size)))), timeout: timeout)
            if let broken = await session.violationSummary { throw await fail(session, broken) }
            switch reply.outcome {
            case .error(let code, let message):
                _ = await end(session)
                return ("refused to send a reply over the kit's max_frame of 65536: \(code): \(message)", nil)
            case .ok:
                throw await fail(session, "answered a call whose reply is over the kit's max_frame of 65536 with a reply that fits, which cannot be the echo")
            default:
                throw await fail(session, "the kit announced max_frame 65536 and asked it to echo \(size) bytes: it \(reply.outcome) (it should answer with an error instead of sending a frame the peer refuses)")
            }
        }
    }

    // MARK: channel ends

    /// Something the kit can call: an echo job, else the first registration.
    func callable(_ declaration: Declaration) -> Target? {
        if let job = echoJob(declaration) { return Target(name: job, kind: .job) }
        return declaration.targets.first
    }

    func channelEndsCase(_ declaration: Declaration) async {
        await run("channel-ends") {
            guard let target = callable(declaration) else { throw NotApplicable("it declares nothing the kit can call") }
            let session = try await sharedSession()
            let sender = await session.makePipe(0x50)
            let reader = await session.makePipe(0x52)
            let payload: Value = .fields(("sender", .reference(0x50, sender)), ("reader", .reference(0x52, reader)))
            var call = invocation(target)
            if case .map(var fields) = call, let i = fields.firstIndex(where: { $0.key == "payload" }) {
                fields[i].value = payload
                call = .map(fields)
            }
            guard let reply = await session.startCall(call, timeout: timeout) else { throw Failure("gave no credit for the call") }
            _ = await session.sendData(on: reader, .binary(Array("a byte stream chunk".utf8)), timeout: timeout)
            await session.send(.close(id: reader))
            let answer = await session.awaitReply(reply, timeout: timeout)
            guard answer.outcome.isAnswer else { throw Failure("handed channel ends in a call to \(target.name), it \(answer.outcome)") }
            guard await session.waitForPluginEnd(of: sender, timeout) else {
                throw Failure("never closed the sender end (ext 0x50, channel \(sender)) it was handed and did not use: an unused end must be closed with [3, id]")
            }
            let what: String
            switch answer.outcome {
            case .ok: what = answer.references.isEmpty ? "answered" : "answered with \(answer.references.count) fresh channel end(s) of its own"
            case .error(let code, _): what = "refused them (\(code))"
            default: what = ""
            }
            return ("\(what); closed the end it did not use", session)
        }
    }

    // MARK: a call the kit gives up on

    func lateReplyCase(_ declaration: Declaration) async {
        await run("timeout.late-reply") {
            guard let target = callable(declaration) else { throw NotApplicable("it declares nothing the kit can call") }
            let session = try await sharedSession()
            guard let first = await session.startCall(invocation(target), timeout: timeout) else { throw Failure("gave no credit for the call") }
            // As plugboardd when a deadline passes: stop waiting, close the reply channel.
            await session.abandon(first)
            let second = await session.call(invocation(target), timeout: timeout)
            guard second.outcome.isAnswer else {
                throw Failure("after the kit gave up on a call (closed its reply channel), the next call: it \(second.outcome); a caller's timeout must not kill the plugin")
            }
            guard session.run.process.exitStatus == nil else { throw Failure("exited after a call timed out") }
            return ("", session)
        }
    }

    // MARK: flow control

    func windowCase(_ declaration: Declaration) async {
        await run("flow.window") {
            guard !declaration.targets.isEmpty else { throw NotApplicable("it declares nothing the kit can call") }
            var limits = KitLimits()
            limits.window = 1024
            limits.deferCredit = true
            let session = try await fresh(limits)
            var calls = declaration.targets.map { invocation($0) }
            if let job = echoJob(declaration) {
                for size in [100, 1500, 3000, 20000] {
                    calls.append(.fields(("kind", "job"), ("name", .string(job)), ("payload", .binary([UInt8](repeating: 7, count: size)))))
                }
            }
            var replies: [UInt64] = []
            for call in calls {
                guard let reply = await session.startCall(call, timeout: timeout) else { throw await fail(session, "gave no credit to send calls on") }
                replies.append(reply)
            }
            for reply in replies { _ = await session.awaitReply(reply, timeout: timeout) }
            if let broken = await session.violationSummary { throw await fail(session, broken) }
            let frames = await session.dataFrames
            let engine = await session.engineRequests.count
            _ = await end(session)
            return ("window 1024: \(frames) DATA frames\(engine > 0 ? " (\(engine) engine calls)" : ""), none sent without credit", nil)
        }
    }

    func creditCase(_ declaration: Declaration) async {
        await run("flow.credit") {
            let echo = echoJob(declaration)
            guard let target = echo.map({ Target(name: $0, kind: .job) }) ?? declaration.targets.first(where: { if case .pipeline = $0.kind { return false } else { return true } }) else {
                throw NotApplicable("it declares no job or hook the kit can call")
            }
            let session = try await fresh()
            let window = await session.pluginWindow
            guard window <= 8 << 20 else {
                _ = await end(session)
                throw NotApplicable("its window (\(window) bytes) is too large to use up")
            }
            let chunk = 32 * 1024
            let call: Value = echo != nil
                ? .fields(("kind", "job"), ("name", .string(target.name)), ("payload", .binary([UInt8](repeating: 3, count: chunk))))
                : invocation(target, padding: chunk)
            var sent = 0
            var replies: [UInt64] = []
            while sent <= 2 * window {
                guard let reply = await session.startCall(call, timeout: timeout) else {
                    if await session.isOver {
                        let how = await session.howItEnded
                        throw await fail(session, "ended the session while the kit sent calls: \(how)")
                    }
                    throw await fail(session, "sent no CREDIT on the calls channel after the kit had sent \(sent) bytes of calls on it (its window: \(window)); the kit could not send more for \(timeout.inSeconds): a receiver must grant credit as it consumes, or the sender stops for good")
                }
                replies.append(reply)
                sent += chunk
            }
            var answered = 0
            for reply in replies {
                let answer = await session.awaitReply(reply, timeout: timeout)
                if answer.outcome.isAnswer { answered += 1 }
            }
            guard answered == replies.count else {
                throw await fail(session, "answered \(answered) of \(replies.count) calls sent past its window")
            }
            let credits = await session.creditsFromPlugin
            _ = await end(session)
            return ("\(replies.count) calls, \(sent) bytes through a window of \(window); \(credits) CREDIT frames", nil)
        }
    }

    // MARK: goaway and end of file

    func goawayCase(_ declaration: Declaration) async {
        await run("goaway.exit") {
            let session = try await fresh()
            _ = await session.calls()
            await session.send(.goaway(reason: "plugboardd is shutting down"))
            // The kit's side stays open: the GOAWAY alone must end the plugin's session.
            guard let status = await session.run.process.waitForExit(timeout: grace) else {
                throw await fail(session, "still running \(grace.inSeconds) after GOAWAY (plugboardd would now send SIGTERM): a plugin must end its session and exit at GOAWAY")
            }
            _ = await end(session)
            guard status == .exited(0) else { throw Failure("\(status) after GOAWAY; a clean exit is status 0") }
            return ("exited 0", nil)
        }
    }

    func endOfFileCase() async {
        await run("eof.exit") {
            let session = try await fresh()
            await session.run.closeOutput()
            guard let status = await session.run.process.waitForExit(timeout: grace) else {
                throw await fail(session, "still running \(grace.inSeconds) after end of file on fd 3: when its session ends, a plugin exits")
            }
            _ = await end(session)
            if case .signaled = status { throw Failure("after end of file on fd 3 it was \(status)") }
            return ("\(status)", nil)
        }
    }
}
