#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Spawn
import Testing
import TestSupport

/// The repository's root, from this file's place in it.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A plugin the kit must pass: how to start it. `executable` is one of our built
/// executables (resolved next to the test bundle) or a command in PATH (`python3`);
/// arguments may name files under the repository as `@REPO/...`.
struct Subject: Sendable, CustomTestStringConvertible {
    var name: String
    var executable: String
    var arguments: [String] = []
    /// More arguments for the kit itself (--options, --echo, --input).
    var kitArguments: [String] = []
    var built = true

    var testDescription: String { name }

    /// The command line: [executable, arguments...], paths resolved.
    func commandLine() throws -> [String] {
        let head = built ? try builtExecutable(executable) : executable
        let rest = try arguments.map { argument -> String in
            if argument == "@PROTOCOL-PYTHON" { return try protocolPythonPlugin() }
            if argument == "@PYTHON-VENV" { return try pythonVenv() }
            if argument.hasPrefix("@BUILT/") { return try builtExecutable(String(argument.dropFirst("@BUILT/".count))) }
            return resolvingRepository(argument)
        }
        return [head] + rest
    }

    /// The kit's own arguments, `@REPO/` resolved.
    var resolvedKitArguments: [String] { kitArguments.map(resolvingRepository) }
}

/// `@REPO/` (anywhere: `PYTHONPATH=@REPO/sdk/python`) as the repository's root.
func resolvingRepository(_ argument: String) -> String {
    argument.replacingOccurrences(of: "@REPO/", with: repositoryRoot + "/")
}

/// The Python of the venv `make pydeps` makes (msgpack installed); the SDK itself is taken
/// from sdk/python through PYTHONPATH, so an edit there needs no reinstall.
func pythonVenv() throws -> String {
    let python = repositoryRoot + "/.build/python-venv/bin/python"
    guard access(python, X_OK) == 0 else {
        throw SystemError("find", errno: ENOENT, "\(python) is missing: run `make pydeps` (make test does) to make the Python SDK's venv")
    }
    return python
}

/// The Python plugin printed in docs/PROTOCOL.md, "Writing a plugin in Python", as a file.
func protocolPythonPlugin() throws -> String {
    let doc = try String(contentsOfFile: repositoryRoot + "/docs/PROTOCOL.md", encoding: .utf8)
    guard let section = doc.range(of: "## Writing a plugin in Python"),
          let start = doc.range(of: "```python\n", range: section.upperBound..<doc.endIndex),
          let end = doc.range(of: "\n```", range: start.upperBound..<doc.endIndex)
    else { throw SystemError("read", errno: ENOENT, "no python block in docs/PROTOCOL.md") }
    let path = "/tmp/plugboard-conformance-doc-plugin-\(getpid()).py"
    try String(doc[start.upperBound..<end.lowerBound]).write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// Runs a command to completion: its status, stdout and stderr.
func runCommand(_ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
    try await runCommand(arguments[0], Array(arguments.dropFirst()), environment: ["PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"])
}

/// The kit's JSON report.
struct Report: Decodable {
    struct Case: Decodable {
        var name: String
        var status: String
        var message: String
        var output: [String]
    }
    var command: [String]
    var plugin: String?
    var cases: [Case]
    var passed: Int
    var failed: Int
    var skipped: Int

    func named(_ name: String) -> Case? { cases.first { $0.name == name } }
    var failures: String { cases.filter { $0.status == "fail" }.map { "FAIL \($0.name): \($0.message) \($0.output.suffix(3))" }.joined(separator: "\n") }
}

/// A kit run starts its plugin some 40 times in a few seconds. At nice 10 (the plugins
/// inherit it) those starts yield the CPU to the other suites' daemons and plugins, whose
/// handshakes must finish within 10 s on a loaded two-core machine.
let niceKit = ["nice", "-n", "10"]

/// Generous waits: a plugin that conforms never makes the kit wait them out, and a loaded
/// machine must not turn a slow answer into a failure.
let patientKit = ["--timeout", "30", "--grace", "30"]

/// Runs plugboard-conformance with `--format json`.
func runKit(_ kitArguments: [String], _ command: [String]) async throws -> (status: Spawn.ExitStatus, report: Report, err: String) {
    let kit = try builtExecutable("plugboard-conformance")
    let result = try await withDeadline(300, "plugboard-conformance") {
        try await runCommand(niceKit + [kit, "--format", "json"] + kitArguments + ["--"] + command)
    }
    let report = try JSONDecoder().decode(Report.self, from: Data(result.out.utf8))
    return (result.status, report, result.err)
}

// Serialized: each kit run starts its plugin some 40 times; eleven runs at once on two
// cores starved the handshakes of the other suites running beside it.
@Suite("the conformance kit: the plugins we ship pass, a broken one fails where it breaks", .serialized)
struct ConformanceKitTests {
    /// Every plugin we ship that speaks the protocol itself. To add one (the Python SDK's
    /// example, say), add a line here:
    ///     Subject(name: "python SDK example", executable: "python3", arguments: ["@REPO/plugins/python/EXAMPLE.py"], built: false),
    static let shipped: [Subject] = [
        Subject(name: "plugboard-plugin-echo", executable: "plugboard-plugin-echo"),
        Subject(name: "plugboard-plugin-host-mount", executable: "plugboard-plugin-host-mount", kitArguments: ["--options", "/srv/conformance /data"]),
        Subject(name: "plugboard-plugin-label", executable: "plugboard-plugin-label"),
        Subject(name: "plugboard-plugin-local-volumes", executable: "plugboard-plugin-local-volumes", kitArguments: ["--options", "/tmp/plugboard-conformance-volumes"]),
        Subject(name: "plugboard-plugin-containers", executable: "plugboard-plugin-containers", kitArguments: ["--options", "/tmp/plugboard-conformance-containers"]),
        Subject(name: "the Python plugin in docs/PROTOCOL.md", executable: "python3", arguments: ["@PROTOCOL-PYTHON"], built: false),
        Subject(name: "plugboard-sh plugins/shell/add-env.sh", executable: "plugboard-sh", arguments: ["@REPO/plugins/shell/add-env.sh", "PLUGBOARD_MANAGED=1"]),
        Subject(
            name: "the Python SDK's example, plugins/python/policy.py", executable: "env",
            arguments: ["PYTHONPATH=@REPO/sdk/python", "@PYTHON-VENV", "@REPO/plugins/python/policy.py"],
            kitArguments: ["--options", "@REPO/plugins/python/policy.example.json"], built: false
        ),
        Subject(name: "plugboard-sh plugins/shell/counter.sh", executable: "plugboard-sh", arguments: ["@REPO/plugins/shell/counter.sh"]),
    ]

    @Test("a shipped plugin passes every case", arguments: shipped)
    func shippedPluginPasses(_ subject: Subject) async throws {
        let (status, report, err) = try await runKit(patientKit + subject.resolvedKitArguments, try subject.commandLine())
        #expect(report.failed == 0, "\(subject.name):\n\(report.failures)\n\(err)")
        #expect(status == .exited(0), "\(subject.name): \(status)")
        #expect(report.passed >= 20, "\(subject.name): only \(report.passed) cases passed")
        #expect(report.named("handshake.hello")?.status == "pass")
        #expect(report.named("goaway.exit")?.status == "pass")
    }

    @Test("the text format: a line per case, the summary last, and plugboard plugin test says the same")
    func textFormat() async throws {
        let echo = try builtExecutable("plugboard-plugin-echo")
        let kit = try await withDeadline(300, "plugboard-conformance") {
            try await runCommand(niceKit + [try builtExecutable("plugboard-conformance")] + patientKit + ["--", echo])
        }
        let lines = kit.out.split(separator: "\n").map(String.init)
        #expect(kit.status == .exited(0), "\(kit.out)\(kit.err)")
        #expect(lines.contains("PASS job.echo (answered nil)"), "\(lines)")
        #expect(lines.contains("PASS echo.int"), "\(lines)")
        let passes = lines.filter { $0.hasPrefix("PASS ") }.count
        #expect(lines.last == "\(passes) passed, 0 failed", "\(lines.suffix(3))")
        #expect(lines.dropLast().allSatisfy { $0.hasPrefix("PASS ") || $0.hasPrefix("SKIP ") }, "\(lines)")

        let cli = try await withDeadline(300, "plugboard plugin test") {
            try await runCommand(niceKit + [try builtExecutable("plugboard"), "plugin", "test"] + patientKit + ["--", echo])
        }
        #expect(cli.status == .exited(0), "\(cli.out)\(cli.err)")
        #expect(cli.out.split(separator: "\n").last.map(String.init) == lines.last)
    }

    @Test("a broken plugin fails exactly the cases it breaks, saying what it did wrong")
    func brokenPluginFails() async throws {
        let fixture = repositoryRoot + "/Tests/ConformanceTests/Fixtures/broken-plugin.py"
        let faults = "slow-hello bad-declaration mangle-int forward-ends no-credit ignore-window die-on-close crash-on-bad-frame ignore-goaway"
        // Short waits (each fault makes the kit wait one out), long enough for a loaded machine.
        let (status, report, err) = try await runKit(["--options", faults, "--timeout", "3", "--grace", "2"], ["python3", fixture])
        #expect(status == .exited(1), "\(err)")
        func failed(_ name: String, saying parts: String...) {
            guard let result = report.named(name) else {
                Issue.record("no case \(name) in \(report.cases.map(\.name))")
                return
            }
            #expect(result.status == "fail", "\(name): \(result.status) \(result.message)")
            for part in parts { #expect(result.message.contains(part), "\(name): \(result.message)") }
        }
        failed("handshake.unprompted", saying: "sent its HELLO only after the kit's")
        failed("declaration", saying: "its hook on container.create", "\"phase\" is \"sometimes\"")
        failed("echo.int", saying: "py.echo changed integers", "sent the integer 4294967296, got back the float 4294967296.0")
        failed("channel-ends", saying: "an id only the kit allocates: channel ends cannot be forwarded")
        failed("flow.credit", saying: "sent no CREDIT on the calls channel after the kit had sent", "its window: 262144")
        failed("flow.window", saying: "with no credit left", "the kit's window of 1024")
        failed("timeout.late-reply", saying: "after the kit gave up on a call (closed its reply channel)")
        failed("goaway.exit", saying: "still running 2 s after GOAWAY")
        for hostile in ["zero-length", "invalid-byte", "trailing-bytes", "truncated-value", "invalid-utf8", "too-deep", "bad-reference", "unknown-frame-type", "unknown-channel", "oversized-frame"] {
            failed("hostile.\(hostile)", saying: "without a GOAWAY saying why")
        }
        // What it does right still passes.
        for name in ["handshake.hello", "handshake.version", "job.py.echo", "echo.str", "echo.bin", "echo.ext", "eof.exit"] {
            #expect(report.named(name)?.status == "pass", "\(name): \(report.named(name).map { "\($0.status) \($0.message)" } ?? "missing")")
        }
        #expect(report.failed == report.cases.filter { $0.status == "fail" }.count)
    }

    @Test("a plugin that cannot start fails with the reason, and a bad command line is a usage error")
    func cannotStart() async throws {
        let (status, report, _) = try await runKit([], ["/nonexistent/plugin"])
        #expect(status == .exited(1))
        #expect(report.failed >= 1)
        #expect(report.cases.first?.message.contains("could not start /nonexistent/plugin") == true, "\(report.cases.first.map(\.message) ?? "")")
        let usage = try await runCommand(niceKit + [try builtExecutable("plugboard-conformance"), "--format", "xml", "--", "true"])
        #expect(usage.status == .exited(64), "\(usage.err)")
        #expect(usage.err.contains("--format takes text or json"), "\(usage.err)")
    }
}
