#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Spawn
import Testing
import TestSupport

/// A system group and two system users for these tests: one in the group, one not. Made
/// with groupadd/useradd when missing (the tests run as root), kept for the next run.
private enum TestAccounts {
    static let groupName = "plugboard-test-admins"
    static let memberName = "plugboard-test-member"
    static let outsiderName = "plugboard-test-outsider"

    struct IDs { let gid: gid_t; let member: (uid: uid_t, gid: gid_t); let outsider: (uid: uid_t, gid: gid_t) }

    static func ensure() async throws -> IDs {
        if groupID(groupName) == nil {
            let made = try await runCommand("/usr/sbin/groupadd", ["--system", groupName])
            // 9: made meanwhile by another run.
            try #require(made.status == .exited(0) || made.status == .exited(9), "groupadd: \(made.err)")
        }
        for (name, groups) in [(memberName, ["-G", groupName]), (outsiderName, [])] where user(name) == nil {
            let made = try await runCommand("/usr/sbin/useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"] + groups + [name])
            try #require(made.status == .exited(0) || made.status == .exited(9), "useradd \(name): \(made.err)")
        }
        let gid = try #require(groupID(groupName))
        let m = try #require(user(memberName))
        let o = try #require(user(outsiderName))
        return IDs(gid: gid, member: m, outsider: o)
    }

    static func groupID(_ name: String) -> gid_t? {
        var record = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getgrnam_r(name, &record, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return record.gr_gid
    }

    static func user(_ name: String) -> (uid: uid_t, gid: gid_t)? {
        var record = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getpwnam_r(name, &record, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return (record.pw_uid, record.pw_gid)
    }
}

@Suite("--admin-group: a second uid in the group is served", .serialized)
struct AdminGroupTests {
    let place = DaemonPlace("admin-group")

    /// The CLI copied where any uid can run it (the build folder may not be reachable).
    func cliCopy() async throws -> String {
        let copy = place.dir + "-cli/plugboard"
        try FileManager.default.createDirectory(atPath: place.dir + "-cli", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let copied = try await runCommand("/bin/cp", [try builtExecutable("plugboard"), copy])
        try #require(copied.status == .exited(0))
        chmod(copy, 0o755)
        return copy
    }

    /// `plugboard ARGS --socket SOCKET` as `uid`/`gid` with that user's supplementary groups.
    func cli(as user: (uid: uid_t, gid: gid_t), _ cli: String, _ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        try await runCommand("/usr/bin/setpriv", ["--reuid=\(user.uid)", "--regid=\(user.gid)", "--init-groups", cli] + arguments + ["--socket", place.socket])
    }

    func mode(_ path: String) -> (mode: mode_t, uid: uid_t, gid: gid_t)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (info.st_mode & 0o7777, info.st_uid, info.st_gid)
    }

    @Test("the socket becomes root:G 0660 in a root:G 0750 directory; a member (its own uid, G only as a supplementary group) is served, a non-member is refused; without the flag the group is taken back")
    func memberServed() async throws {
        guard getuid() == 0 else {
            Issue.record("this test needs root, to make a group and users and run the CLI as them (setpriv); CI runs as root")
            return
        }
        let ids = try await TestAccounts.ensure()
        // The member's primary group is its own: only the supplementary group lets it in.
        try #require(ids.member.gid != ids.gid)
        let cli = try await cliCopy()
        defer { try? FileManager.default.removeItem(atPath: place.dir + "-cli") }

        let daemon = try await place.startDaemon(["--admin-group", TestAccounts.groupName])
        try await whileRunning(daemon) {
            let socket = try #require(mode(place.socket))
            #expect(socket.mode == 0o660 && socket.gid == ids.gid, "socket \(String(socket.mode, radix: 8)) gid \(socket.gid)")
            let dir = try #require(mode(place.dir))
            #expect(dir.mode == 0o750 && dir.gid == ids.gid && dir.uid == 0, "directory \(String(dir.mode, radix: 8)) gid \(dir.gid)")
            let member = try await self.cli(as: ids.member, cli, ["call", "echo", #""from a member""#])
            #expect(member.status == .exited(0), "member: \(member.err)")
            #expect(member.out.contains("from a member"))
            let list = try await self.cli(as: ids.member, cli, ["plugin", "ls"])
            #expect(list.out.contains("echo"), "\(list.out) \(list.err)")
            let outsider = try await self.cli(as: ids.outsider, cli, ["plugin", "ls"])
            #expect(outsider.status != .exited(0))
            #expect(outsider.out.isEmpty, "outsider: \(outsider.out)")
            // Refused by the file modes, before any connection: it cannot even see the socket.
            let look = try await runCommand("/usr/bin/setpriv", ["--reuid=\(ids.outsider.uid)", "--regid=\(ids.outsider.gid)", "--init-groups", "/usr/bin/stat", place.socket])
            #expect(look.status != .exited(0) && look.err.contains("Permission denied"), "\(look.err)")
        }
        daemon.process.signal(SIGTERM)
        _ = try await withDeadline(30, "plugboardd to exit") { await daemon.process.waitForExit() }

        // The next daemon on that socket without --admin-group takes the directory back.
        let next = try await Daemon.startReady(socket: place.socket, stateDirectory: place.dir + "-state", ["--plugin", "echo"])
        try await whileRunning(next) {
            #expect(mode(place.socket)?.mode == 0o600)
            let dir = try #require(mode(place.dir))
            #expect(dir.mode == 0o700 && dir.gid == getegid(), "directory \(String(dir.mode, radix: 8)) gid \(dir.gid)")
            let member = try await self.cli(as: ids.member, cli, ["plugin", "ls"])
            #expect(member.status != .exited(0))
            #expect(member.out.isEmpty, "\(member.out)")
        }
        await place.stop(next)
    }

    @Test("a socket directory holding other files is not changed: the socket is the group's, and the log says the group cannot reach it")
    func sharedDirectoryLeftAlone() async throws {
        guard getuid() == 0 else {
            Issue.record("this test needs root, to make a group (groupadd); CI runs as root")
            return
        }
        let ids = try await TestAccounts.ensure()
        try FileManager.default.createDirectory(atPath: place.dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        #expect(FileManager.default.createFile(atPath: place.dir + "/keep", contents: Data("not plugboardd's\n".utf8)))
        let daemon = try await place.startDaemon(["--admin-group", TestAccounts.groupName])
        try await whileRunning(daemon) {
            let dir = try #require(mode(place.dir))
            #expect(dir.mode == 0o700 && dir.gid == 0)
            let socket = try #require(mode(place.socket))
            #expect(socket.mode == 0o660 && socket.gid == ids.gid)
            let warned = try await withDeadline(10, "the warning") { await daemon.log.waitFor("the admin group cannot reach the socket") }
            #expect(warned?.contains(place.dir) == true)
        }
        await place.stop(daemon)
    }
}
