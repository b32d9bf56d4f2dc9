import AdminProtocol
import Chan
import Hooks
import Hub
import Pipeline
import NIOConcurrencyHelpers
import PluginKit
import Routing

/// Serves a plugin's "engine" channels: the job calls it makes, each checked against its
/// grants. It owns every task it starts; cancelling ``serve()`` ends them all.
struct EngineCallServer: Sendable {
    /// Engine calls one plugin may have in flight; more wait in its channels (credit).
    static let maxCallsInFlight = 32

    let session: Session
    let caller: String
    /// Jobs its declaration asked for (`calls`), to explain a refusal.
    let asked: Set<String>
    let engine: EngineParts
    /// Whether the plugin may call `job` now (its grants can change while it runs).
    let isGranted: @Sendable (String) async -> Bool

    /// Accepts the plugin's channels and answers their requests until the session ends.
    ///
    /// As for admin sessions (``AdminServer``), the session's tasks run on its event loop,
    /// and so does a call of a job served by another process: it only checks the grant,
    /// sends, waits and answers, and both its request and its reply arrive on loops, so it
    /// costs no wake-up of the global pool. Everything else a plugin asks (a job in
    /// process, whose handler may block; extension points, hook chains, the pipeline) runs
    /// on the global pool, off the loop that other sessions share.
    func serve() async {
        // One budget for all its engine channels: past it the daemon stops reading, the
        // channels' windows fill, and the plugin's sends wait (credit), so a flooding
        // plugin holds at most this many calls' worth of the daemon's memory.
        let slots = Limiter(limit: Self.maxCallsInFlight)
        await withTaskExecutorPreference(session.taskExecutor) {
            await withDiscardingTaskGroup { group in
                while let channel = try? await session.accept() {
                    guard channel.label == "engine" else {
                        channel.close()
                        continue
                    }
                    group.addTask(executorPreference: session.taskExecutor) {
                        await withDiscardingTaskGroup { calls in
                            while let request = try? await channel.nextRequest() {
                                guard (try? await slots.acquire()) != nil else { return }
                                let onLoop = forwardsToAnotherProcess(request.body)
                                calls.addTask(executorPreference: onLoop ? session.taskExecutor : globalConcurrentExecutor) {
                                    defer { slots.release() }
                                    await answer(request)
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether `body` is a plain job call of a job a plugin in another process serves (the
    /// only kind of request that may run on the session's loop).
    func forwardsToAnotherProcess(_ body: Value) -> Bool {
        guard let job = body["job"]?.stringValue,
              body["best"] == nil, body["all"] == nil, body["pipeline.send"] == nil,
              body["hooks.run"] == nil, body["hooks.notify"] == nil else { return false }
        return engine.hub.isServedRemotely(job)
    }

    private func answer(_ request: Request) async {
        let body = request.body
        let argument = body["argument"] ?? .nil
        if let point = body["best"]?.stringValue ?? body["all"]?.stringValue {
            guard await permit(request, point, open: true, what: "call extension point \(point)", declaredIn: "its declaration (\"calls\")") else { return }
            return await reply(request) {
                if body["all"] != nil { return .array(try await engine.hub.callAll(point, argument, caller: caller).map(\.value)) }
                if let provider = body["provider"]?.stringValue { return try await engine.hub.callProvider(point, owner: provider, argument, caller: caller) }
                return try await engine.hub.callBest(point, argument, caller: caller)
            }
        }
        if let type = body["pipeline.send"]?.stringValue {
            guard await permit(request, pipelineSendGrant(type), what: "send \(type) messages into the pipeline", declaredIn: "it did not declare it (sendsMessages)") else { return }
            return await reply(request) { try await engine.pipeline.route(PipelineMessage(type: type, body: body["body"] ?? .nil)).value }
        }
        if let event = body["hooks.run"]?.stringValue ?? body["hooks.notify"]?.stringValue {
            guard await permit(request, hookRunGrant(event), what: "run the \(event) hooks", declaredIn: "it did not declare it (runsHooks)") else { return }
            guard let payload = body["payload"], let object = body["object"]?.stringValue else {
                try? await request.fail(code: "bad.request", message: "a hooks request needs \"payload\" and \"object\"")
                return
            }
            return await reply(request) {
                guard body["hooks.run"] != nil else {
                    engine.hooks.notify(event, payload: payload, object: object)
                    return .nil
                }
                return try await engine.hooks.run(event, payload: payload, object: object).value
            }
        }
        guard let job = body["job"]?.stringValue else {
            try? await request.fail(code: "bad.request", message: "an engine request is {\"job\": NAME, \"argument\": VALUE}, {\"best\"|\"all\": POINT, ...}, {\"pipeline.send\": TYPE, ...}, {\"hooks.run\": EVENT, ...} or {\"hooks.notify\": EVENT, ...}")
            return
        }
        guard await permit(request, job, open: true, what: "call job \(job)", declaredIn: "its declaration (\"calls\")") else { return }
        await reply(request) { try await engine.hub.call(job, argument, caller: caller) }
    }

    /// Whether the plugin may use `grant` (a job, a point, `hooks.run:EVENT`,
    /// `pipeline.send:TYPE`); if not, the request is refused saying why. `open`: the jobs of
    /// services every plugin may call count too.
    private func permit(_ request: Request, _ grant: String, open: Bool = false, what: String, declaredIn: String) async -> Bool {
        if open, engine.openJobs.withLockedValue({ $0.contains(grant) }) { return true }
        if await isGranted(grant) { return true }
        let why = asked.contains(grant)
            ? "it asked for it but was not granted it"
            : (declaredIn.hasPrefix("it ") ? declaredIn : "it did not ask for it in \(declaredIn)")
        try? await request.fail(code: "permission.denied", message: "plugin \(caller) may not \(what): \(why)")
        return false
    }

    /// Answers `request` with what `work` returns, or with its failure's code and reason.
    private func reply(_ request: Request, _ work: () async throws -> Value) async {
        let result: Value
        do {
            result = try await work()
        } catch let error as RoutingError {
            try? await request.fail(code: error.wireCode, message: error.reason)
            return
        } catch {
            try? await request.fail(code: "engine.error", message: "\(error)")
            return
        }
        try? await request.respond(result)
    }
}
