#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Spawn

@Suite("posix_spawn with descriptors mapped into the child")
struct ProcessSpawnerTests {
    /// Reads a pipe to EOF (the child holds the only write end).
    func readAll(_ fd: CInt) -> String {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            out.append(contentsOf: buffer[0..<n])
        }
        close(fd)
        return String(decoding: out, as: UTF8.self)
    }

    func run(_ script: String, fds: [CInt: CInt] = [:]) throws -> SpawnedProcess {
        try ProcessSpawner.spawn(SpawnOptions(executable: "/bin/sh", arguments: ["-c", script], environment: ["PATH": "/usr/bin:/bin"], fileDescriptors: fds))
    }

    @Test("the child writes on fd 3 and reads on fd 4 as mapped")
    func mappedDescriptors() async throws {
        let out = try PipeDescriptors.make()
        let into = try PipeDescriptors.make()
        let child = try run("read line <&4; echo \"got $line\" >&3", fds: [3: out.writeEnd, 4: into.readEnd])
        close(out.writeEnd)
        close(into.readEnd)
        _ = "hello\n".withCString { write(into.writeEnd, $0, 6) }
        close(into.writeEnd)
        #expect(readAll(out.readEnd) == "got hello\n")
        #expect(await child.waitForExit() == .exited(0))
    }

    @Test("sources that collide with targets are swapped safely")
    func swappedDescriptors() async throws {
        // Ask for the pipe's ends at each other's numbers in the child: every source is
        // also a target, the case that naive dup2 ordering gets wrong. (No fixed fd numbers:
        // other tests run in this process at the same time.)
        let p = try PipeDescriptors.make()
        // bash, because dash's `>&N` takes single-digit descriptors only.
        let child = try ProcessSpawner.spawn(SpawnOptions(
            executable: "/bin/bash", arguments: ["-c", "echo swapped >&\(p.readEnd)"],
            environment: ["PATH": "/usr/bin:/bin"], fileDescriptors: [p.readEnd: p.writeEnd, p.writeEnd: p.readEnd]
        ))
        close(p.writeEnd)
        #expect(readAll(p.readEnd) == "swapped\n")
        #expect(await child.waitForExit() == .exited(0))
    }

    @Test("stdin is /dev/null and nothing above the mapped descriptors leaks in")
    func noLeaks() async throws {
        let out = try PipeDescriptors.make()
        let leaked = open("/dev/null", O_RDONLY)  // no O_CLOEXEC: only closefrom keeps it out
        defer { close(leaked) }
        let child = try run("cat; ls /proc/$$/fd >&3", fds: [3: out.writeEnd])
        close(out.writeEnd)
        let fds = readAll(out.readEnd).split(separator: "\n").compactMap { Int($0) }
        #expect(await child.waitForExit() == .exited(0))
        #expect(fds.contains(3))
        #expect(!fds.contains(Int(leaked)), "fd \(leaked) leaked into the child: \(fds)")
        #expect(fds.allSatisfy { $0 <= 10 }, "\(fds)")
    }

    @Test("exit codes and signals are reported as they happened")
    func exitStatus() async throws {
        let exiting = try run("exit 7")
        #expect(await exiting.waitForExit() == .exited(7))
        let sleeper = try run("exec sleep 600")
        sleeper.signal(SIGKILL)
        let status = await sleeper.waitForExit()
        #expect(status == .signaled(SIGKILL))
        #expect(status.description == "killed by signal 9 (SIGKILL)")
    }

    @Test("the child leads its own process group, so the group can be signalled")
    func processGroup() async throws {
        let child = try run("sleep 600 & wait")
        child.signalGroup(SIGTERM)
        #expect(await child.waitForExit() == .signaled(SIGTERM))
    }

    @Test("a missing executable is an error naming it")
    func missing() throws {
        #expect {
            try ProcessSpawner.spawn(SpawnOptions(executable: "no-such-plugin-binary", environment: ["PATH": "/usr/bin"]))
        } throws: { error in
            "\(error)".contains("no-such-plugin-binary")
        }
    }
}
