// A PluginKit plugin whose declaration the tests choose through its option string:
//   label=KEY:VALUE (a container.create hook adding that label)
//   seize=required|optional seize-declares (a hostile container.create hook) slow=JOB:MS (declares a deadline, never answers)
//   provides=a,b provides-on-restart=a,b requires=c calls=d crash-at-start crash-on-restart hook=EVENT:TIMEOUT_MS
//   point=POINT:PRIORITY,... (provides an extension point answering "NAME:ARGUMENT")
//   pipeline=TYPE:PRIORITY,... (appends "+NAME" to a string body; a non-alert body holding
//   "alert" also yields an alert message) sends=TYPE,... (may send those into the pipeline)
// Besides the provided jobs (which echo), it always serves NAME.crash, NAME.garbage,
// NAME.restarts, NAME.version, NAME.close3, NAME.close4, NAME.spawn, NAME.eat, NAME.hang, NAME.call, NAME.flood, NAME.env and NAME.print.
#if canImport(Glibc)
import Glibc
#endif
import Chan
import Pipeline
import PluginKit

struct TestPlugin: Plugin {
    func declare(_ context: PluginContext) -> PluginDeclaration {
        var options: [String: String] = [:]
        for word in context.options.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1).map(String.init)
            options[kv[0]] = kv.count > 1 ? kv[1] : ""
        }
        if options["crash-at-start"] != nil { exit(3) }
        if options["crash-on-restart"] != nil && context.restarts > 0 { exit(4) }
        func list(_ key: String) -> [String] { options[key].map { $0.split(separator: ",").map(String.init) } ?? [] }
        // version=V: the version it declares, and what NAME.version answers (plugin upgrade tests).
        let version = options["version"] ?? "test"
        var d = PluginDeclaration(name: context.name, version: version)
        d.job(context.name + ".version") { _ in .string(version) }
        d.requires = list("requires")
        d.calls = list("calls")
        for job in list("provides") { d.job(job) { $0 } }
        // slow=JOB:MS: a job declaring a deadline of MS that never answers.
        for entry in list("slow") {
            let parts = entry.split(separator: ":").map(String.init)
            d.job(parts[0], timeout: .milliseconds(Int64(parts.count > 1 ? parts[1] : "") ?? 500)) { _ in
                let (stream, continuation) = AsyncStream.makeStream(of: Never.self)
                for await _ in stream {}
                withExtendedLifetime(continuation) {}
                return .nil
            }
        }
        // provides-on-restart=a,b: jobs it declares only once restarted (a declaration that changes).
        if context.restarts > 0 { for job in list("provides-on-restart") { d.job(job) { $0 } } }
        let name = context.name
        for entry in list("pipeline") {
            let parts = entry.split(separator: ":").map(String.init)
            d.messages(parts[0], priority: parts.count > 1 ? Int(parts[1]) ?? 0 : 0) { type, body in
                // A container.log-like map has its "line" tagged; anything else is taken as text.
                if case .map(var entries) = body, let i = entries.firstIndex(where: { $0.key == "line" }), let line = entries[i].value.stringValue {
                    entries[i].value = .string(line + "+" + name)
                    // A line that says "alert" also yields an alert message: a run of its own.
                    if line.contains("alert") { return [(type, .map(entries)), ("alert", .fields(("line", .string(line))))] }
                    return [(type, .map(entries))]
                }
                let text = body.stringValue ?? "\(body)"
                var out: [(type: String, body: Value)] = [(type, .string(text + "+" + name))]
                if type != "alert" && text.contains("alert") { out.append(("alert", body)) }
                return out
            }
        }
        // pipeline-fail=TYPE:PRIORITY: an optional step that always fails (it must be skipped).
        for entry in list("pipeline-fail") {
            let parts = entry.split(separator: ":").map(String.init)
            d.messages(parts[0], priority: parts.count > 1 ? Int(parts[1]) ?? 0 : 0, policy: .optional) { _, _ in
                throw PluginError(code: "test.broken", message: "\(name) fails every message")
            }
        }
        // announce=TYPE: handles TYPE messages by publishing them as "test.announced" events.
        for type in list("announce") {
            d.messages(type) { _, body in
                _ = try await context.engine?.call("events.publish", .fields(("type", "test.announced"), ("attributes", .fields(("line", body["line"] ?? body)))), timeout: .seconds(10))
                return []
            }
        }
        for type in list("sends") { d.sendsMessages(type) }
        // point=POINT:PRIORITY provides an extension point answering "NAME:ARGUMENT".
        for entry in list("point") {
            let parts = entry.split(separator: ":").map(String.init)
            d.provide(parts[0], priority: parts.count > 1 ? Int(parts[1]) ?? 0 : 0) { argument in
                .string("\(name):\(argument.stringValue ?? "\(argument)")")
            }
        }
        // Fails with the code and message it is given: they must reach the caller unchanged.
        d.job("\(name).fail") { argument in
            throw PluginError(code: argument["code"]?.stringValue ?? "test.failed", message: argument["message"]?.stringValue ?? "failed on purpose")
        }
        // Calls a job and reports how it failed, as a plugin caller sees it.
        d.job("\(name).probe") { argument in
            guard let engine = context.engine, let job = argument["job"]?.stringValue else { return "no engine" }
            do {
                return .fields(("ok", try await engine.call(job, argument["argument"] ?? .nil, timeout: .seconds(10))))
            } catch let error as ChanError {
                return .fields(("code", .string(error.remoteCode ?? "none")), ("message", .string(error.reason)))
            }
        }
        // Returns a byte stream of `size` bytes (byte i is i % 251), written as the caller reads.
        d.job("\(name).bytes") { argument in
            guard let engine = context.engine else { return "no engine" }
            let size = Int(argument["size"]?.intValue ?? 0)
            let (writer, reader) = try await engine.makeByteStream()
            Task {
                var sent = 0
                while sent < size {
                    let n = min(65_536, size - sent)
                    try? await writer.write((sent..<(sent + n)).map { UInt8($0 % 251) })
                    sent += n
                }
                writer.close()
            }
            return .channel(.byteStreamReader(reader))
        }
        // Reads a byte stream (the argument, or its "stdin" field) to its end: its size and sum.
        d.job("\(name).count") { argument in
            let end = argument["stdin"] ?? argument
            guard case .channel(.byteStreamReader(let reader)) = end else { return "no stream" }
            var size = 0
            var sum = 0
            while let chunk = try await reader.read() {
                size += chunk.count
                for b in chunk { sum = (sum + Int(b)) % 1_000_003 }
            }
            return .fields(("size", .int(Int64(size))), ("sum", .int(Int64(sum))), ("label", argument["label"] ?? .nil))
        }
        // Answers with `size` bytes: past the daemon's 1 MiB frame limit it cannot be sent as one.
        d.job("\(name).big") { argument in
            .binary([UInt8](repeating: 0x42, count: Int(argument["size"]?.intValue ?? 0)))
        }
        d.job("\(name).best") { argument in
            guard let engine = context.engine, let point = argument["point"]?.stringValue else { return "no engine" }
            return try await engine.callBest(point, argument["argument"] ?? .nil, timeout: .seconds(10))
        }
        d.job("\(name).send") { argument in
            guard let engine = context.engine, let type = argument["type"]?.stringValue else { return "no engine" }
            return try await engine.send(type, argument["body"] ?? .nil).value
        }
        // A hook that continues at once, declared with whatever timeout the test chooses
        // (Int64.max included: the daemon must clamp it, not trap).
        if let hook = options["hook"], let colon = hook.lastIndex(of: ":"), let ms = Int64(hook[hook.index(after: colon)...]) {
            d.hook(String(hook[..<colon]), priority: 1, timeout: .milliseconds(ms), policy: .optional) { payload, _ in .continue(payload) }
        }
        // label=KEY:VALUE: a container.create hook that adds that label (remote plugins' tests).
        if let label = options["label"], let colon = label.firstIndex(of: ":") {
            let key = String(label[..<colon])
            let value = String(label[label.index(after: colon)...])
            d.hook("container.create", priority: 45, policy: .required) { payload, _ in
                guard case .map(var entries) = payload else { return .veto("the container spec is not a map") }
                var labels = payload["labels"]?.mapValue ?? []
                labels.removeAll { $0.key.stringValue == key }
                labels.append((key: .string(key), value: .string(value)))
                entries.removeAll { $0.key.stringValue == "labels" }
                entries.append((key: "labels", value: .map(labels)))
                return .continue(.map(entries))
            }
        }
        // seize=required|optional: a hostile container.create hook that bind-mounts the host's
        // / read-write at /host and replaces the command; seize-declares also declares the
        // hook privileges that needs (mount=/, command).
        if let policy = options["seize"] {
            if options["seize-declares"] != nil { d.hookPrivileges = ["mount=/", "command"] }
            d.hook("container.create", priority: 90, policy: policy == "optional" ? .optional : .required) { payload, _ in
                var entries = (payload.mapValue ?? []).filter { $0.key != "mounts" && $0.key != "args" }
                let mounts = (payload["mounts"]?.arrayValue ?? []) + [.fields(("source", "/"), ("destination", "/host"), ("type", "bind"), ("options", ["rbind", "rw"]))]
                entries.append((key: "mounts", value: .array(mounts)))
                entries.append((key: "args", value: ["/bin/sh", "-c", "touch /host/tmp/seized"]))
                return .continue(.map(entries))
            }
        }
        d.job("\(name).crash") { _ in exit(9) }
        d.job("\(name).garbage") { _ in
            var junk: [UInt8] = [0x00, 0x00, 0x00, 0x03, 0xc1, 0xc1, 0xc1]
            _ = write(4, &junk, junk.count)
            return "garbage sent"
        }
        d.job("\(name).restarts") { _ in .int(Int64(context.restarts)) }
        d.job("\(name).close4") { _ in
            // Cuts its own line to the daemon: nothing it writes arrives any more.
            close(4)
            return "closed"
        }
        d.job("\(name).close3") { _ in
            // Stops reading what the daemon sends, and lives on: its session is dead, its process is not.
            close(3)
            return "closed"
        }
        // Runs `sh -c COMMAND` as its own child, which inherits fds 3/4 (as a careless
        // plugin's children do), and answers once the shell has exited: for tests of what a
        // plugin leaves behind.
        d.job("\(name).spawn") { argument in
            let command = argument["command"]?.stringValue ?? "true"
            var pid: pid_t = 0
            let argv: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", command].map { (word: String) in strdup(word) } + [nil]
            defer { for p in argv { free(p) } }
            let rc = posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ)
            guard rc == 0 else { throw PluginError(code: "test.spawn", message: "posix_spawn: \(rc)") }
            // The shell has forked whatever it backgrounds once it exits.
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            return .int(Int64(pid))
        }
        // Allocates and touches `mib` MiB, and keeps it: for tests of memory limits.
        d.job("\(name).eat") { argument in
            let mib = Int(argument["mib"]?.intValue ?? 64)
            for _ in 0..<mib {
                guard let block = malloc(1 << 20) else { return "malloc failed" }
                memset(block, 0x5a, 1 << 20)
            }
            return .int(Int64(mib))
        }
        d.job("\(name).hang") { _ in
            // Never answers: a hung plugin, for tests of deadlines and crashes.
            let (stream, continuation) = AsyncStream.makeStream(of: Never.self)
            for await _ in stream {}
            withExtendedLifetime(continuation) {}  // releasing it would end the stream
            return .nil
        }
        d.job("\(name).call") { argument in
            guard let engine = context.engine, let job = argument["job"]?.stringValue else { return "no engine" }
            return try await engine.call(job, argument["argument"] ?? .nil, timeout: .seconds(10))
        }
        // Floods the daemon: `count` engine calls of `job` at once, each with `size` bytes
        // (or `argument`), without waiting for any; answers when all have ended.
        d.job("\(name).flood") { argument in
            guard let engine = context.engine, let job = argument["job"]?.stringValue else { return "no engine" }
            let count = Int(argument["count"]?.intValue ?? 1000)
            let payload: Value = argument["size"]?.intValue.map { .binary([UInt8](repeating: 0x5a, count: Int($0))) } ?? (argument["argument"] ?? .nil)
            let (ok, failed, firstError) = await withTaskGroup(of: String?.self) { group -> (Int, Int, String) in
                for _ in 0..<count {
                    group.addTask {
                        do {
                            _ = try await engine.call(job, payload, timeout: .seconds(120))
                            return nil
                        } catch {
                            return "\(error)"
                        }
                    }
                }
                var ok = 0, failed = 0, first = ""
                for await r in group {
                    if let r { failed += 1; if first.isEmpty { first = r } } else { ok += 1 }
                }
                return (ok, failed, first)
            }
            return .fields(("ok", .int(Int64(ok))), ("failed", .int(Int64(failed))), ("first_error", .string(firstError)))
        }
        d.job("\(name).env") { _ in
            let keys = ["PLUGBOARD_PLUGIN_NAME", "PLUGBOARD_PROTOCOL", "PLUGBOARD_RESTARTS", "PLUGBOARD_OPTIONS"]
            return .map(keys.map { key in (key: .string(key), value: getenv(key).map { .string(String(cString: $0)) } ?? .nil) })
        }
        d.job("\(name).print") { argument in
            print("printed on stdout: \(argument)")
            fflush(nil)  // stdout to a pipe is block-buffered; a line-oriented plugin flushes
            return "printed"
        }
        return d
    }
}

await PluginKit.serve(TestPlugin())
