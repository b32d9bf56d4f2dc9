import Foundation
import Chan
import Testing
@testable import Containers

@Suite("containers: privileges and the OCI spec, without runc")
struct PrivilegeAndSpecTests {
    @Test("privileges parse from and print to the form the refusal lists")
    func privilegeText() {
        for text in ["network=host", "mount=/a:/b", "mount=/var/log:/host/log:ro", "capability=CAP_NET_ADMIN", "device=/dev/fuse"] {
            #expect(Privilege(text)?.description == text)
        }
        #expect(Privilege("capability=net_admin") == .capability("CAP_NET_ADMIN"))
        #expect(Privilege("network=none") == nil)
        #expect(Privilege("mount=relative:/b") == nil)
        #expect(Privilege("state.get") == nil)
    }

    @Test("the OCI spec for a plugin keeps the safe defaults and adds only what was granted")
    func ociDefaults() throws {
        let manifest = PluginManifest(description: nil, entrypoint: ["/p"], env: ["A=1"], workdir: nil, privileges: nil)
        let plain = try OCISpec.forPlugin(name: "p", bundle: "/b", manifest: manifest, granted: [], environment: ["PLUGBOARD_PROTOCOL": "x"])
        #expect(plain.root.path == "/b/rootfs")
        #expect(plain.root.readonly)
        #expect(plain.linux.namespaces.map { (n: OCISpec.Namespace) in n.type }.contains("network"))
        #expect(plain.process.capabilities.bounding.isEmpty)
        #expect(plain.process.noNewPrivileges)
        #expect(!plain.mounts.contains { (m: OCISpec.Mount) in m.type == "bind" })
        #expect(plain.process.env.contains("A=1") && plain.process.env.contains("PLUGBOARD_PROTOCOL=x"))
        let granted = try OCISpec.forPlugin(
            name: "p", bundle: "/b", manifest: manifest,
            granted: [.hostNetwork, .capability("CAP_NET_ADMIN"), .mount(source: "/var/log", destination: "/host/log", readonly: true)],
            environment: [:]
        )
        #expect(!granted.linux.namespaces.map { (n: OCISpec.Namespace) in n.type }.contains("network"))
        #expect(granted.process.capabilities.effective == ["CAP_NET_ADMIN"])
        let bind = granted.mounts.first { (m: OCISpec.Mount) in m.type == "bind" }
        #expect(bind?.source == "/var/log")
        #expect(bind?.destination == "/host/log")
        #expect(bind?.options?.contains("ro") == true)
    }
}

@Suite("hook privileges: what a container.create hook's change needs")
struct HookPrivilegeRuleTests {
    func spec(args: [String] = ["true"], mounts: [(String, String, [String])] = [], extra: [(String, Value)] = []) -> Value {
        .map([
            (key: "name", value: "c"), (key: "rootfs", value: "/r"), (key: "args", value: .array(args.map { .string($0) })),
            (key: "mounts", value: .array(mounts.map { .fields(("source", .string($0.0)), ("destination", .string($0.1)), ("options", .array($0.2.map { .string($0) }))) })),
        ] + extra.map { (key: .string($0.0), value: $0.1) })
    }

    @Test("a mount needs a grant covering its resolved source; read-only grants allow read-only mounts only")
    func mounts() {
        let granted: Set<HookPrivilege> = [HookPrivilege("mount=/srv/data")!, HookPrivilege("mount=/srv/ro:ro")!]
        let before = spec()
        #expect(HookPrivilege.refusals(before: before, after: spec(mounts: [("/srv/data/x", "/x", ["rbind", "rw"])]), granted: granted).isEmpty)
        #expect(HookPrivilege.refusals(before: before, after: spec(mounts: [("/srv/ro", "/x", ["rbind", "ro"])]), granted: granted).isEmpty)
        let rw = HookPrivilege.refusals(before: before, after: spec(mounts: [("/srv/ro", "/x", ["rbind", "rw"])]), granted: granted)
        #expect(rw.map(\.missing) == ["mount=/srv/ro"])
        // `..` does not climb out of a grant; nor does a sibling that shares a prefix.
        let escape = HookPrivilege.refusals(before: before, after: spec(mounts: [("/srv/data/../../etc", "/x", ["rbind", "rw"])]), granted: granted)
        #expect(escape.map(\.missing) == ["mount=/etc"])
        #expect(HookPrivilege.refusals(before: before, after: spec(mounts: [("/srv/database", "/x", [])]), granted: granted).count == 1)
        // Removing the operator's mount needs the grant too.
        let removed = HookPrivilege.refusals(before: spec(mounts: [("/home", "/home", [])]), after: spec(), granted: granted)
        #expect(removed.first?.field.contains("removes /home") == true)
    }

    @Test("the command needs `command`; fields a spec does not have are refused whatever the grants")
    func commandAndUnknownFields() {
        let before = spec()
        #expect(HookPrivilege.refusals(before: before, after: spec(args: ["sh"]), granted: []).map(\.missing) == ["command"])
        #expect(HookPrivilege.refusals(before: before, after: spec(args: ["sh"]), granted: [.command]).isEmpty)
        let privileged = HookPrivilege.refusals(before: before, after: spec(extra: [("privileged", true)]), granted: [.command, .mount(source: "/", readOnly: false)])
        #expect(privileged.map(\.field) == ["privileged"])
        #expect(HookPrivilege("mount=relative") == nil && HookPrivilege("everything") == nil)
    }
}

@Suite("container plugins' resource limits")
struct ContainerLimitTests {
    @Test("limits go into the OCI spec's linux.resources as runc reads them; none leaves them out")
    func resources() throws {
        let manifest = PluginManifest(description: nil, entrypoint: ["/p"], env: nil, workdir: nil, privileges: nil)
        var spec = try OCISpec.forPlugin(name: "p", bundle: "/b", manifest: manifest, granted: [], environment: [:])
        let plain = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
        #expect(!plain.contains("\"memory\"") && !plain.contains("\"pids\""))
        spec.limit(memoryBytes: 64 << 20, pids: 32, cpus: 0.5)
        let object = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(spec)) as? [String: Any]
        let resources = (object?["linux"] as? [String: Any])?["resources"] as? [String: Any]
        #expect((resources?["memory"] as? [String: Any])?["limit"] as? Int == 64 << 20)
        #expect((resources?["pids"] as? [String: Any])?["limit"] as? Int == 32)
        #expect((resources?["cpu"] as? [String: Any])?["quota"] as? Int == 50_000)
        #expect((resources?["cpu"] as? [String: Any])?["period"] as? Int == 100_000)
    }
}
