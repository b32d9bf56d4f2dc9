import Chan

/// How the kit answers the engine calls a plugin makes on its `"engine"` channel while the
/// kit calls it: as plugboardd would with no other plugin loaded (docs/CONFORMANCE.md,
/// "The kit as the engine").
///
/// A request the plugin's declaration does not grant (its `calls`) gets
/// `permission.denied`, as from plugboardd. Granted, `echo` returns its argument;
/// `hooks.run` returns the payload unchanged (no other hooks); `hooks.notify` returns nil;
/// `pipeline.send` returns the message as the run's only final message; `best` fails with
/// `routing.no-provider` and `all` returns `[]`; every other job fails with
/// `routing.unknown-job`, since the kit runs no other plugin.
enum EngineStandIn {
    /// The id of the `"reply"` end (ext 0x50) of a request, if it is one.
    static func replyEnd(of message: Value) -> UInt64? {
        guard message["body"] != nil, case .ext(0x50, let data)? = message["reply"], data.count == 8 else { return nil }
        return data.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// A summary for the report and the reply to send.
    static func answer(_ body: Value, grants: Set<String>, plugin: String) -> (String, Value) {
        func error(_ code: String, _ message: String) -> Value {
            .fields(("error", .fields(("code", .string(code)), ("message", .string(message)))))
        }
        func denied(_ grant: String, _ message: String) -> Value? {
            grants.contains(grant) ? nil : error("permission.denied", message)
        }
        if let job = body["job"]?.stringValue {
            if let refused = denied(job, "plugin \(plugin) may not call \(job)") { return ("job \(job) (denied)", refused) }
            if job == "echo" { return ("job echo", .fields(("ok", body["argument"] ?? .nil))) }
            return ("job \(job)", error("routing.unknown-job", "no plugin serves the job \(job) (the conformance kit runs no other plugin)"))
        }
        if let event = body["hooks.run"]?.stringValue {
            if let refused = denied("hooks.run:\(event)", "plugin \(plugin) may not run the \(event) hooks") { return ("hooks.run \(event) (denied)", refused) }
            let result: Value = .fields(
                ("payload", body["payload"] ?? .nil), ("attribution", .map([])), ("steps", .array([])), ("skipped", .array([]))
            )
            return ("hooks.run \(event)", .fields(("ok", result)))
        }
        if let event = body["hooks.notify"]?.stringValue {
            if let refused = denied("hooks.run:\(event)", "plugin \(plugin) may not run the \(event) hooks") { return ("hooks.notify \(event) (denied)", refused) }
            return ("hooks.notify \(event)", .fields(("ok", .nil)))
        }
        if let type = body["pipeline.send"]?.stringValue {
            if let refused = denied("pipeline.send:\(type)", "plugin \(plugin) may not send \(type) messages into the pipeline") {
                return ("pipeline.send \(type) (denied)", refused)
            }
            let message: Value = .fields(("type", .string(type)), ("body", body["body"] ?? .nil))
            return ("pipeline.send \(type)", .fields(("ok", .fields(("final", .array([message])), ("path", .array([]))))))
        }
        if let point = body["best"]?.stringValue {
            if let refused = denied(point, "plugin \(plugin) may not call \(point)") { return ("best \(point) (denied)", refused) }
            return ("best \(point)", error("routing.no-provider", "nobody provides \(point) (the conformance kit runs no other plugin)"))
        }
        if let point = body["all"]?.stringValue {
            if let refused = denied(point, "plugin \(plugin) may not call \(point)") { return ("all \(point) (denied)", refused) }
            return ("all \(point)", .fields(("ok", .array([]))))
        }
        return ("unknown request", error("bad.request", "an engine request is {\"job\", \"argument\"}, {\"hooks.run\"|\"hooks.notify\", \"payload\", \"object\"}, {\"pipeline.send\", \"body\"} or {\"best\"|\"all\", \"argument\"}"))
    }
}
