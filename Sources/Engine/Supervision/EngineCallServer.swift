import Chan
import NIOConcurrencyHelpers
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
        guard let job = request.body["job"]?.stringValue else {
            try? await request.fail(code: "bad.request", message: "an engine call is {\"job\": NAME, \"argument\": VALUE}")
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
            try? await request.fail(code: "routing.\(error.code)", message: error.reason)
        } catch {
            try? await request.fail(code: "engine.error", message: "\(error)")
        }
    }
}
