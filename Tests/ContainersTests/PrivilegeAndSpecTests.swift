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
