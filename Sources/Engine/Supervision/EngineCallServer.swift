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
    func serve() async {
        // One budget for all its engine channels: past it the daemon stops reading, the
        // channels' windows fill, and the plugin's sends wait (credit), so a flooding
        // plugin holds at most this many calls' worth of the daemon's memory.
        let slots = Limiter(limit: Self.maxCallsInFlight)
        await withDiscardingTaskGroup { group in
            while let channel = try? await session.accept() {
                guard channel.label == "engine" else {
                    channel.close()
                    continue
                }
                group.addTask {
                    await withDiscardingTaskGroup { calls in
                        while let request = try? await channel.nextRequest() {
                            guard (try? await slots.acquire()) != nil else { return }
                            calls.addTask {
                                defer { slots.release() }
                                await answer(request)
                            }
                        }
                    }
                }
            }
        }
    }

    private func answer(_ request: Request) async {
        if let point = request.body["best"]?.stringValue ?? request.body["all"]?.stringValue {
            return await answerProviders(request, point: point, all: request.body["all"] != nil)
        }
        if let type = request.body["pipeline.send"]?.stringValue {
            return await answerPipelineSend(request, type: type)
        }
        if let event = request.body["hooks.run"]?.stringValue ?? request.body["hooks.notify"]?.stringValue {
            return await answerHooks(request, event: event, run: request.body["hooks.run"] != nil)
        }
        guard let job = request.body["job"]?.stringValue else {
            try? await request.fail(code: "bad.request", message: "an engine request is {\"job\": NAME, \"argument\": VALUE}, {\"hooks.run\": EVENT, ...} or {\"hooks.notify\": EVENT, ...}")
            return
        }
        var allowed = engine.openJobs.withLockedValue { $0.contains(job) }
        if !allowed { allowed = await isGranted(job) }
        guard allowed else {
            let why = asked.contains(job) ? "it asked for it but was not granted it" : "it did not ask for it in its declaration (\"calls\")"
            try? await request.fail(code: "permission.denied", message: "plugin \(caller) may not call job \(job): \(why)")
            return
        }
        do {
            let result = try await engine.hub.call(job, request.body["argument"] ?? .nil, caller: caller)
            try? await request.respond(result)
        } catch let error as RoutingError {
            try? await request.fail(code: error.wireCode, message: error.reason)
        } catch {
            try? await request.fail(code: "engine.error", message: "\(error)")
        }
    }

    /// Runs a hook chain (or tells observers) for a plugin granted `hooks.run:EVENT`.
    private func answerHooks(_ request: Request, event: String, run: Bool) async {
        let grant = hookRunGrant(event)
        guard await isGranted(grant) else {
            let why = asked.contains(grant) ? "it asked for it but was not granted it" : "it did not declare it (runsHooks)"
            try? await request.fail(code: "permission.denied", message: "plugin \(caller) may not run the \(event) hooks: \(why)")
            return
        }
        guard let payload = request.body["payload"], let object = request.body["object"]?.stringValue else {
            try? await request.fail(code: "bad.request", message: "a hooks request needs \"payload\" and \"object\"")
            return
        }
        do {
            if run {
                let outcome = try await engine.hooks.run(event, payload: payload, object: object)
                try? await request.respond(outcome.value)
            } else {
                engine.hooks.notify(event, payload: payload, object: object)
                try? await request.respond(.nil)
            }
        } catch let error as RoutingError {
            try? await request.fail(code: error.wireCode, message: error.reason)
        } catch {
            try? await request.fail(code: "engine.error", message: "\(error)")
        }
    }

    /// Routes a message through the pipeline for a plugin granted `pipeline.send:TYPE`.
    private func answerPipelineSend(_ request: Request, type: String) async {
        let grant = pipelineSendGrant(type)
        guard await isGranted(grant) else {
            let why = asked.contains(grant) ? "it asked for it but was not granted it" : "it did not declare it (sendsMessages)"
            try? await request.fail(code: "permission.denied", message: "plugin \(caller) may not send \(type) messages into the pipeline: \(why)")
            return
        }
        do {
            let result = try await engine.pipeline.route(PipelineMessage(type: type, body: request.body["body"] ?? .nil))
            try? await request.respond(result.value)
        } catch let error as RoutingError {
            try? await request.fail(code: error.wireCode, message: error.reason)
        } catch {
            try? await request.fail(code: "engine.error", message: "\(error)")
        }
    }

    /// Calls the best provider of `point`, or all of them, for a plugin granted the point
    /// (it names the point in its `calls`, like a job).
    private func answerProviders(_ request: Request, point: String, all: Bool) async {
        var allowed = engine.openJobs.withLockedValue { $0.contains(point) }
        if !allowed { allowed = await isGranted(point) }
        guard allowed else {
            let why = asked.contains(point) ? "it asked for it but was not granted it" : "it did not ask for it in its declaration (\"calls\")"
            try? await request.fail(code: "permission.denied", message: "plugin \(caller) may not call extension point \(point): \(why)")
            return
        }
        do {
            let argument = request.body["argument"] ?? .nil
            if all {
                let answers = try await engine.hub.callAll(point, argument, caller: caller)
                try? await request.respond(.array(answers.map(\.value)))
            } else if let provider = request.body["provider"]?.stringValue {
                let result = try await engine.hub.callProvider(point, owner: provider, argument, caller: caller)
                try? await request.respond(result)
            } else {
                let result = try await engine.hub.callBest(point, argument, caller: caller)
                try? await request.respond(result)
            }
        } catch let error as RoutingError {
            try? await request.fail(code: error.wireCode, message: error.reason)
        } catch {
            try? await request.fail(code: "engine.error", message: "\(error)")
        }
    }
}
