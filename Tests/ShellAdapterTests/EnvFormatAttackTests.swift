#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Testing
@testable import ShellAdapter

/// The env format attacked: forged answer lines, NUL bytes, and names that collide or
/// take the adapter's own.
@Suite("plugboard-sh: the env format refuses what it cannot carry faithfully")
struct EnvFormatAttackTests {
    /// The message of a ShellCallError `body` throws, or nil.
    func message(_ body: () throws -> Any) -> String? {
        do {
            _ = try body()
            return nil
        } catch let error as ShellCallError {
            return error.description
        } catch {
            return "unexpected \(error)"
        }
    }

    @Test("a value printed with a newline forges a line; a repeated key fails the answer instead of winning")
    func forgedLines() throws {
        // What disk-usage.sh printed for the path "/x\nkb=999999": the forged kb comes first.
        let forged = "path=/x\nkb=999999\nkb=12\n"
        let job = message { try EnvFormat.result(forged) }
        #expect(job?.contains("kb answered twice, on lines 2 and 3") == true, "\(job ?? "accepted")")
        // With and without the PB_ prefix a job's keys are one key.
        let prefixed = message { try EnvFormat.result("kb=1\nPB_kb=2\n") }
        #expect(prefixed?.contains("kb and PB_kb answered twice") == true, "\(prefixed ?? "accepted")")
        // A hook's answer: one variable, however it is spelled, is set once.
        let spec: Value = .fields(("name", "web"), ("env", ["A=1"]))
        let hook = message { try EnvFormat.apply("PB_NAME=api\nPB_ENV_1=B=2\nPB_NAME=forged\n", to: spec) }
        #expect(hook?.contains("PB_NAME answered twice, on lines 1 and 3") == true, "\(hook ?? "accepted")")
        let spelled = message { try EnvFormat.apply("PB_NAME=api\nPB_name=forged\n", to: spec) }
        #expect(spelled?.contains("answered twice") == true, "\(spelled ?? "accepted")")
        // One line per key is still fine.
        #expect(try EnvFormat.result("path=/x\nkb=12\n") == .fields(("path", "/x"), ("kb", "12")))
    }

    @Test("a NUL byte in a value is refused, naming the key, instead of cutting the value short")
    func nul() {
        let top = message { try EnvFormat.flatten(.fields(("path", "/tmp\u{0}/etc"))) }
        #expect(top?.contains("path (PB_PATH) holds a NUL byte") == true, "\(top ?? "accepted")")
        let nested = message { try EnvFormat.flatten(.fields(("mounts", .array([.fields(("source", .binary([0x2f, 0, 0x78])))])))) }
        #expect(nested?.contains("mounts[0].source (PB_MOUNTS_0_SOURCE) holds a NUL byte") == true, "\(nested ?? "accepted")")
        let scalar = message { try EnvFormat.flatten("a\u{0}b") }
        #expect(scalar?.contains("the payload (PB_VALUE) holds a NUL byte") == true, "\(scalar ?? "accepted")")
    }

    @Test("two payload paths that flatten to one variable are refused, naming both")
    func collisions() throws {
        let dotted = message { try EnvFormat.flatten(.fields(("a.b", 1), ("a_b", 2))) }
        #expect(dotted?.contains("\"a.b\" and a_b would both be PB_A_B") == true, "\(dotted ?? "accepted")")
        let dashed = message { try EnvFormat.flatten(.fields(("a_b", 1), ("A-B", 2))) }
        #expect(dashed?.contains("a_b and A-B would both be PB_A_B") == true, "\(dashed ?? "accepted")")
        let nested = message { try EnvFormat.flatten(.fields(("a", .fields(("b", 1))), ("a_b", 2))) }
        #expect(nested?.contains("a.b and a_b would both be PB_A_B") == true, "\(nested ?? "accepted")")
        let cased = message { try EnvFormat.flatten(.fields(("name", "x"), ("NAME", "y"))) }
        #expect(cased?.contains("name and NAME would both be PB_NAME") == true, "\(cased ?? "accepted")")
        let indexed = message { try EnvFormat.flatten(.fields(("env", ["A=1"]), ("env_0", "forged"))) }
        #expect(indexed?.contains("env[0] and env_0 would both be PB_ENV_0") == true, "\(indexed ?? "accepted")")
        let inList = message { try EnvFormat.flatten(.array([.fields(("x.y", 1), ("x_y", 2))])) }
        #expect(inList?.contains("the payload[0].\"x.y\" and the payload[0].x_y would both be PB_VALUE_0_X_Y") == true, "\(inList ?? "accepted")")
    }

    @Test("a list's _COUNT is the adapter's: a key env_count beside a list env is refused, in either order")
    func reservedCount() throws {
        let after = message { try EnvFormat.flatten(.fields(("env", ["A=1"]), ("env_count", "0"))) }
        #expect(after?.contains("the length of list env and env_count would both be PB_ENV_COUNT") == true, "\(after ?? "accepted")")
        let before = message { try EnvFormat.flatten(.fields(("env_count", "0"), ("env", ["A=1"]))) }
        #expect(before?.contains("env_count and the length of list env would both be PB_ENV_COUNT") == true, "\(before ?? "accepted")")
        // Without a list of that name, a key ending in _count is an ordinary key, both ways.
        let retries: Value = .fields(("retry_count", 3), ("env", ["A=1"]))
        let flat = Dictionary(try EnvFormat.flatten(retries), uniquingKeysWith: { a, _ in a })
        #expect(flat["PB_RETRY_COUNT"] == "3" && flat["PB_ENV_COUNT"] == "1")
        let changed = try EnvFormat.apply("PB_RETRY_COUNT=4\nPB_ENV_COUNT=7\nPB_ENV_1=B=2\n", to: retries)
        #expect(changed["retry_count"] == 4, "set, not skipped as a count")
        #expect(changed["env"] == ["A=1", "B=2"], "the list's count is skipped: it follows from the list")
    }

    @Test("a payload that is not a map is PB_VALUE, and a hook's PB_VALUE answer replaces it")
    func value() throws {
        #expect(try EnvFormat.apply("PB_VALUE=new\n", to: "old") == "new")
        #expect(try EnvFormat.apply("PB_VALUE=7\n", to: 6) == 7)
        #expect(try EnvFormat.apply("PB_VALUE_1=b\n", to: ["a"]) == ["a", "b"])
        #expect(throws: ShellCallError.self) { try EnvFormat.apply("PB_OTHER=x\n", to: "old") }
    }
}

@Suite("plugboard-sh: the PB_ prefix belongs to the payload")
struct EnvOwnershipTests {
    let dir = "/tmp/plugboard-sh-env-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    @Test("inherited PB_* variables never reach a script; an unrepresentable payload does not run it")
    func inheritedAndRefused() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = dir + "/show.sh"
        try """
            #!/bin/sh
            # plugboard: job show format=env
            touch \(dir)/ran
            printf 'forged=%s\\n' "${PB_FORGED-unset}"
            printf 'name=%s\\n' "$PB_NAME"
            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let runner = ScriptRunner(script: script, arguments: [], environment: ["PATH": "/usr/bin:/bin", "PB_FORGED": "from the daemon", "PB_NAME": "inherited"])
        let entry = try #require(try ScriptHeader.parse(String(contentsOfFile: script, encoding: .utf8), script: "show.sh").first)
        let shown = try await runner.answer(entry, payload: .fields(("name", "web")))
        #expect(shown == .value(.fields(("forged", "unset"), ("name", "web"))))
        let empty = try await runner.answer(entry, payload: .fields(("other", "x")))
        #expect(empty == .value(.fields(("forged", "unset"), ("name", ""))), "PB_NAME is not inherited when the payload lacks it")

        unlink(dir + "/ran")
        await #expect {
            try await runner.answer(entry, payload: .fields(("a.b", 1), ("a_b", 2)))
        } throws: { error in
            "\(error)".contains("show) was not run: its payload cannot be given in env format: \"a.b\" and a_b would both be PB_A_B")
        }
        #expect(access(dir + "/ran", F_OK) != 0, "the script did not run")
    }
}
