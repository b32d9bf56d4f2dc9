import Chan
import PluginKit
import Testing
@testable import ShellAdapter

@Suite("plugboard-sh: header lines and the env format")
struct ShellFormatTests {
    @Test("header lines declare hooks, jobs, pipeline types and calls with their keys")
    func header() throws {
        let entries = try ScriptHeader.parse("""
            #!/bin/sh
            # An audit script.
            # plugboard: hook container.create priority=50 policy=optional timeout=2s format=json
            # plugboard: job backup.run format=env timeout=500ms
            # plugboard: job fast.one mode=stream
            # plugboard: pipeline log.line priority=3
            # plugboard: calls state.get
            echo "# plugboard: job not.a.header"
            """, script: "audit.sh")
        #expect(entries.map(\.name) == ["container.create", "backup.run", "fast.one", "log.line", "state.get"])
        #expect(entries[0].kind == .hook && entries[0].priority == 50 && entries[0].policy == .optional && entries[0].timeout == .seconds(2))
        #expect(entries[1].format == .env && entries[1].timeout == .milliseconds(500) && entries[1].line == 4)
        #expect(entries[2].mode == .stream)
        #expect(entries[3].kind == .pipeline && entries[3].priority == 3)
        #expect(entries[4].kind == .calls)
    }

    @Test("a hook's privileges= become the script's declared hook privileges; a bad one is refused naming the line")
    func hookPrivileges() throws {
        let entries = try ScriptHeader.parse("""
            #!/bin/sh
            # plugboard: hook container.create privileges=mount=/srv/data:ro,command
            # plugboard: hook container.start privileges=command
            """, script: "mounts.sh")
        #expect(entries[0].privileges == ["mount=/srv/data:ro", "command"])
        let plugin = ShellPlugin(name: "mounts", entries: entries, runner: ScriptRunner(script: "/bin/true", arguments: [], environment: [:]))
        let declaration = plugin.declare(PluginContext(name: "mounts", options: "", restarts: 0, engine: nil))
        #expect(declaration.hookPrivileges == ["mount=/srv/data:ro", "command"])
        #expect(declaration.wireValue["hook_privileges"] == ["mount=/srv/data:ro", "command"])
        #expect(throws: ScriptHeaderError.self) {
            try ScriptHeader.parse("# plugboard: hook container.create privileges=everything\n", script: "bad.sh")
        }
        #expect(throws: ScriptHeaderError.self) {
            try ScriptHeader.parse("# plugboard: job x.y privileges=command\n", script: "bad.sh")
        }
    }

    @Test("a malformed header line is an error naming its line number and what is wrong")
    func malformed() {
        let cases: [(String, String)] = [
            ("# plugboard: hooky container.create", "unknown kind"),
            ("# plugboard: hook", "expected"),
            ("# plugboard: hook container.create prio=5", "unknown key \"prio\""),
            ("# plugboard: hook container.create priority=high", "priority must be a whole number"),
            ("# plugboard: hook container.create policy=maybe", "policy is required or optional"),
            ("# plugboard: hook container.create timeout=soon", "timeout is a duration"),
            ("# plugboard: job x format=xml", "format is json or env"),
            ("# plugboard: job x mode=stream format=env", "format=env cannot be used"),
            ("# plugboard: job x policy=optional", "apply to hooks only"),
            ("# plugboard: job x priority", "is not KEY=VALUE"),
        ]
        for (line, reason) in cases {
            #expect {
                try ScriptHeader.parse("#!/bin/sh\n# plugboard: job fine\n\(line)\n", script: "s.sh")
            } throws: { error in
                guard let e = error as? ScriptHeaderError else { return false }
                return e.line == 3 && e.reason.contains(reason) && e.description.contains("s.sh line 3")
            }
        }
        #expect(throws: ScriptHeaderError.self) { try ScriptHeader.parse("#!/bin/sh\n# plugboard: job a\n# plugboard: job a\n", script: "s.sh") }
        #expect(throws: ScriptHeaderError.self) { try ScriptHeader.parse("#!/bin/sh\necho hi\n", script: "s.sh") }
    }

    @Test("env format: payloads flatten into PB_* and PB_* lines apply back, appending to lists")
    func envFormat() throws {
        let spec: Value = .fields(
            ("name", "web"), ("env", ["A=1"]), ("labels", .fields(("io.team", "x"))),
            ("mounts", .array([.fields(("source", "/d"), ("destination", "/data"))])), ("exit_code", 3)
        )
        let flat = Dictionary(try EnvFormat.flatten(spec), uniquingKeysWith: { a, _ in a })
        #expect(flat["PB_NAME"] == "web")
        #expect(flat["PB_ENV_0"] == "A=1" && flat["PB_ENV_COUNT"] == "1")
        #expect(flat["PB_LABELS_IO_TEAM"] == "x")
        #expect(flat["PB_MOUNTS_0_SOURCE"] == "/d" && flat["PB_MOUNTS_COUNT"] == "1")
        #expect(flat["PB_EXIT_CODE"] == "3")
        #expect(try EnvFormat.flatten("just text").first! == ("PB_VALUE", "just text"))

        let changed = try EnvFormat.apply("PB_ENV_1=B=2\nPB_NAME=api\nPB_EXIT_CODE=4\nPB_MOUNTS_0_DESTINATION=/mnt\nPB_NEWKEY=v\n", to: spec)
        #expect(changed["env"] == ["A=1", "B=2"])
        #expect(changed["name"] == "api")
        #expect(changed["exit_code"] == 4)
        #expect(changed["mounts"]?.arrayValue?.first?["destination"] == "/mnt")
        #expect(changed["newkey"] == "v")
        #expect(throws: ShellCallError.self) { try EnvFormat.apply("PB_ENV_5=x", to: spec) }
        #expect(throws: ShellCallError.self) { try EnvFormat.apply("no equals sign here", to: spec) }
        #expect(try EnvFormat.result("kb=12\npath=/x\n") == .fields(("kb", "12"), ("path", "/x")))
    }
}

@Suite("plugboard-sh: header durations")
struct ShellDurationTests {
    @Test("durations parse in ms, s and m, and clamp to one day instead of overflowing")
    func durations() {
        #expect(ScriptHeader.parseDuration("250ms") == .milliseconds(250))
        #expect(ScriptHeader.parseDuration("1.5s") == .milliseconds(1500))
        #expect(ScriptHeader.parseDuration("2m") == .seconds(120))
        #expect(ScriptHeader.parseDuration("153722867280912930m") == .seconds(86_400))
        #expect(ScriptHeader.parseDuration("9223372036854775807ms") == .seconds(86_400))
        #expect(ScriptHeader.parseDuration("0s") == nil)
        #expect(ScriptHeader.parseDuration("soon") == nil)
    }
}
