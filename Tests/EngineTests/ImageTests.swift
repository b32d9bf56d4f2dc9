#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOConcurrencyHelpers
import Spawn
import Testing
import TestSupport

/// Plugin images end to end: `plugboard plugin create/push/install/upgrade` against a real
/// plugboardd and a real registry on loopback (docs/DISTRIBUTION.md).
@Suite("plugin images", .serialized)
struct ImageTests {
    static let root = "image tests install container plugins: they need root (runc runs containers as root here); run make test as root, as CI does"

    /// The CLI without a daemon (create, push).
    static func plugboard(_ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        try await runCommand(try builtExecutable("plugboard"), arguments)
    }

    /// `plugboard plugin create NAME BUNDLE --layout LAYOUT [--tag TAG]`; the digest.
    static func create(_ name: String, _ bundle: String, layout: String, tag: String? = nil) async throws -> String {
        let r = try await plugboard(["plugin", "create", name, bundle, "--layout", layout] + (tag.map { ["--tag", $0] } ?? []))
        try #require(r.status == .exited(0), "plugin create failed: \(r.err)")
        return String(r.out.split(separator: " ").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `plugboard plugin push TAG REF --layout LAYOUT`; the digest the registry has.
    static func push(_ tag: String, _ reference: String, layout: String) async throws -> String {
        let r = try await plugboard(["plugin", "push", tag, reference, "--layout", layout])
        try #require(r.status == .exited(0), "plugin push failed: \(r.err)")
        let digest = String(r.out.split(separator: " ").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(digest.hasPrefix("sha256:"), "push printed \(r.out)")
        return digest
    }

    /// The test images, made once per test run in one OCI layout: `label` (the shipped label
    /// bundle, by `plugboard plugin create`); `label-2` (the same layer, plugin.json's env
    /// saying LABEL_VERSION=2.0.0) and `netlabel` (asking for network=host), both by `umoci
    /// config` over label's manifest, so the 100 MB layer is compressed once; `tiny` (busybox
    /// and a manifest, small enough to corrupt and cut quickly).
    actor Images {
        static let shared = Images()
        private var made: String?

        func layout() async throws -> String {
            if let made { return made }
            // What earlier test runs left (their processes are gone) is removed: nothing piles up.
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [] where entry.hasPrefix("plugboard-test-images-") {
                let pid = entry.dropFirst("plugboard-test-images-".count).split(separator: "-").first.flatMap { pid_t($0) }
                if let pid, kill(pid, 0) != 0, errno == ESRCH { try? FileManager.default.removeItem(atPath: "/tmp/" + entry) }
            }
            let layout = "/tmp/plugboard-test-images-\(getpid())"
            try? FileManager.default.removeItem(atPath: layout)
            let label = try await labelBundle()
            _ = try await ImageTests.create("label", label, layout: layout)
            let manifest = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: label + "/plugin.json"))) as? [String: Any])
            var v2 = manifest
            v2["env"] = ["LABEL_KEY=io.plugboard.labelled-by", "LABEL_VERSION=2.0.0"]
            try await Self.derive(layout, "label-2", v2, name: "label")
            var net = manifest
            net["privileges"] = ["network": "host"]
            try await Self.derive(layout, "netlabel", net, name: "netlabel")
            let tiny = layout + "-tiny"
            try? FileManager.default.removeItem(atPath: tiny)
            try FileManager.default.createDirectory(atPath: tiny + "/rootfs/bin", withIntermediateDirectories: true)
            let busybox = try #require(["/bin/busybox", "/usr/bin/busybox"].first { FileManager.default.fileExists(atPath: $0) }, "busybox-static is installed")
            try FileManager.default.copyItem(atPath: busybox, toPath: tiny + "/rootfs/bin/busybox")
            try #"{"entrypoint": ["/bin/busybox", "sh"]}"#.write(toFile: tiny + "/plugin.json", atomically: true, encoding: .utf8)
            _ = try await ImageTests.create("tiny", tiny, layout: layout)
            made = layout
            return layout
        }

        /// Tags `from`'s image as `tag` and gives it `manifest` (and `name`) in its config labels.
        static func derive(_ layout: String, _ tag: String, _ manifest: [String: Any], name: String) async throws {
            let json = String(decoding: try JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys]), as: UTF8.self)
            for args in [
                ["tag", "--image", layout + ":label", tag],
                ["config", "--image", layout + ":" + tag, "--config.label", "io.plugboard.plugin=" + json, "--config.label", "io.plugboard.plugin.name=" + name],
            ] {
                let r = try await runCommand("/usr/bin/umoci", args)
                try #require(r.status == .exited(0), "umoci \(args): \(r.err)")
            }
        }
    }

    /// The CLI against `place`'s daemon, with the socket first (arguments after `--` are the container's).
    static func cli(_ place: DaemonPlace, _ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        try await plugboard(["-H", place.socket] + arguments)
    }

    /// Runs `body` with a registry, stopping the test's own one after, whatever happens.
    static func withRegistry(_ body: (TestRegistry) async throws -> Void) async throws {
        let registry = try await TestRegistry.start()
        do {
            try await body(registry)
        } catch {
            await registry.stop()
            throw error
        }
        await registry.stop()
    }

    /// What an installed image leaves in the state directory: bundles under images/plugins,
    /// work in progress under images/tmp.
    static func imageFiles(_ state: String) -> [String] {
        let fm = FileManager.default
        return ["plugins", "tmp"].flatMap { group in
            ((try? fm.contentsOfDirectory(atPath: state + "/images/" + group)) ?? []).map { group + "/" + $0 }
        }.sorted()
    }

    /// Calls `job` through the CLI from `clients` loops until `stop` is set; every answer
    /// (or failure) in order, per client.
    final class Load: @unchecked Sendable {
        let answers = NIOLockedValueBox<[[String]]>([])
        let failures = NIOLockedValueBox<[String]>([])
        let stopped = NIOLockedValueBox(false)
        private var tasks: [Task<Void, Never>] = []

        init(place: DaemonPlace, job: String, clients: Int) {
            answers.withLockedValue { $0 = Array(repeating: [], count: clients) }
            for i in 0..<clients {
                tasks.append(Task { [answers, failures, stopped] in
                    while !stopped.withLockedValue({ $0 }) {
                        do {
                            let r = try await place.cli(["call", job])
                            if r.status == .exited(0) {
                                let v = r.out.trimmingCharacters(in: .whitespacesAndNewlines).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                                answers.withLockedValue { $0[i].append(v) }
                            } else {
                                failures.withLockedValue { $0.append(r.err) }
                            }
                        } catch {
                            failures.withLockedValue { $0.append("\(error)") }
                        }
                    }
                })
            }
        }

        /// Waits until every client has `n` more answers than it had.
        func waitForCalls(_ n: Int) async throws {
            let start = answers.withLockedValue { $0.map(\.count) }
            _ = try await withDeadline(60, "\(n) more calls from each client") { [answers] in
                while answers.withLockedValue({ a in zip(a, start).contains { $0.count < $1 + n } }) {
                    try await Task.sleep(for: .milliseconds(10))
                }
            }
        }

        deinit { stopped.withLockedValue { $0 = true } }

        func stop() async {
            stopped.withLockedValue { $0 = true }
            for t in tasks { await t.value }
        }

        /// How often the answer changed, per client.
        var changes: [Int] {
            answers.withLockedValue { $0.map { a in zip(a, a.dropFirst()).filter { $0 != $1 }.count } }
        }
    }

    @Test("label: create → push → install by digest on a fresh daemon → serves its hook → kept across a restart → upgrade to a new tag under load, zero failed calls")
    func labelLifecycle() async throws {
        try #require(getuid() == 0, Comment(rawValue: Self.root))
        let place = DaemonPlace("image-label")
        try FileManager.default.createDirectory(atPath: place.dir + "-work", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: place.dir + "-work") }
        let layout = try await Images.shared.layout()
        let v1 = try await labelBundle()
        let created = try Self.digest(layout, tag: "label")
        try await Self.withRegistry { registry in
            let d1 = try await Self.push("label", registry.address + "/team/label:1.0", layout: layout)
            #expect(d1 == created, "the registry keeps the manifest as made: the digest is the same")
            let d2 = try await Self.push("label-2", registry.address + "/team/label:2.0", layout: layout)
            #expect(d1 != d2)
            let state = place.dir + "-state"
            var daemon = try await place.startDaemon(["--plugin", "containers"])
            try await whileRunning(daemon) { () async throws in
                let installed = try await place.cli(["plugin", "install", registry.address + "/team/label@" + d1])
                #expect(installed.status == .exited(0), "\(installed.err)")
                #expect(installed.out.contains("label active") && installed.out.contains(d1), "\(installed.out)")
                #expect(try await place.cli(["call", "label.version"]).out.contains("1.0.0"))
                // Its hook, for real: a container created gets its label, from inside its container.
                let container = try await Self.cli(place, ["container", "create", "--rootfs", v1 + "/rootfs", "--", "true"])
                try #require(container.status == .exited(0), "\(container.err)")
                let id = container.out.trimmingCharacters(in: .whitespacesAndNewlines)
                let inspected = try await place.cli(["container", "inspect", id])
                #expect(inspected.out.contains("io.plugboard.labelled-by"), "\(inspected.out)")
                _ = try await place.cli(["container", "rm", id])
                let ls = try await place.cli(["plugin", "ls"])
                #expect(ls.out.contains("IMAGE") && ls.out.contains(registry.address + "/team/label@" + d1) && ls.out.contains(d1), "\(ls.out)")
                let inspect = try await place.cli(["plugin", "inspect", "label"])
                #expect(inspect.out.contains("\"digest\"") && inspect.out.contains(d1) && inspect.out.contains("\"manifest\"")
                    && inspect.out.contains("privileges_asked") && inspect.out.contains("privileges_granted"), "\(inspect.out)")
                #expect(Self.imageFiles(state).count == 1 && Self.imageFiles(state).allSatisfy { $0.hasPrefix("plugins/label-") }, "\(Self.imageFiles(state))")
            }
            // A restart: the plugin comes back from its record, at the pinned digest.
            daemon.process.signal(SIGTERM)
            _ = await daemon.process.waitForExit()
            daemon = try await Daemon.startReady(socket: place.socket, stateDirectory: state, ["--plugin", "echo", "--plugin", "containers"])
            try await whileRunning(daemon) { () async throws in
                #expect(try await place.cli(["call", "label.version"]).out.contains("1.0.0"))
                #expect(try await place.cli(["plugin", "ls"]).out.contains(d1))
                // The upgrade, under load from three clients.
                let load = Load(place: place, job: "label.version", clients: 3)
                try await load.waitForCalls(2)
                let upgraded = try await place.cli(["plugin", "upgrade", "label", registry.address + "/team/label:2.0"])
                try await load.waitForCalls(3)
                await load.stop()
                #expect(upgraded.status == .exited(0), "\(upgraded.err)")
                #expect(upgraded.out.contains("label upgraded 1.0.0 -> 2.0.0") && upgraded.out.contains(d2), "\(upgraded.out)")
                #expect(load.failures.withLockedValue { $0 }.isEmpty, "failed calls during the upgrade: \(load.failures.withLockedValue { $0 })")
                #expect(load.changes == [1, 1, 1], "each client saw the version change once: \(load.answers.withLockedValue { $0 })")
                #expect(load.answers.withLockedValue { $0 }.allSatisfy { $0.first == "1.0.0" && $0.last == "2.0.0" })
                #expect(try await place.cli(["plugin", "ls"]).out.contains(d2))
                // One container left (the new one), one image bundle (the old one's removed).
                let runc = try await runCommand("/usr/sbin/runc", ["--root", state + "/runc", "list", "-q"])
                #expect(runc.out.split(separator: "\n").count == 1 && runc.out.hasPrefix("plugin-label."), "\(runc.out)")
                #expect(Self.imageFiles(state).count == 1, "\(Self.imageFiles(state))")
                // An upgrade to an image asking for more than label holds: refused before it runs,
                // the running version untouched, nothing left of the new one.
                _ = try await Self.push("netlabel", registry.address + "/team/label:3.0", layout: layout)
                let refused = try await place.cli(["plugin", "upgrade", "label", registry.address + "/team/label:3.0"])
                #expect(refused.status != .exited(0))
                #expect(refused.err.contains("asks for privileges that were not granted") && refused.err.contains("plugboard plugin grant label network=host"), "\(refused.err)")
                #expect(try await place.cli(["call", "label.version"]).out.contains("2.0.0"))
                #expect(Self.imageFiles(state).count == 1, "\(Self.imageFiles(state))")
                // Its hook again, from the new version.
                let container = try await Self.cli(place, ["container", "run", "--rm", "--rootfs", v1 + "/rootfs", "--", "sh", "-c", "exit 0"])
                #expect(container.status == .exited(0), "\(container.err)")
            }
            // The upgrade is what comes back after a restart.
            daemon.process.signal(SIGTERM)
            _ = await daemon.process.waitForExit()
            daemon = try await Daemon.startReady(socket: place.socket, stateDirectory: state, ["--plugin", "echo", "--plugin", "containers"])
            try await whileRunning(daemon) { () async throws in
                #expect(try await place.cli(["call", "label.version"]).out.contains("2.0.0"))
                #expect(try await place.cli(["plugin", "rm", "label"]).status == .exited(0))
                #expect(Self.imageFiles(state).isEmpty, "plugin rm removes the image's files: \(Self.imageFiles(state))")
            }
            await place.stop(daemon)
        }
    }

    @Test("install errors: a bad reference, a missing tag, ungranted privileges, a corrupt layer, a registry that goes away mid-pull, an unsigned image under a signature policy — each a clear error, nothing half-installed")
    func installErrors() async throws {
        try #require(getuid() == 0, Comment(rawValue: Self.root))
        let place = DaemonPlace("image-errors")
        let work = place.dir + "-work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let layout = try await Images.shared.layout()
        // A policy that wants a sigstore signature (by a key of ours) for every image from a layout.
        let key = work + "/key.pub"
        let keygen = try await runCommand("/bin/sh", ["-c", "openssl ecparam -name prime256v1 -genkey -noout | openssl ec -pubout -out \(key)"])
        try #require(keygen.status == .exited(0), "openssl: \(keygen.err)")
        let policy = work + "/policy.json"
        try #"{"default": [{"type": "insecureAcceptAnything"}], "transports": {"oci": {"": [{"type": "sigstoreSigned", "keyPath": "KEY", "signedIdentity": {"type": "matchRepository"}}]}}}"#
            .replacingOccurrences(of: "KEY", with: key).write(toFile: policy, atomically: true, encoding: .utf8)
        try await Self.withRegistry { registry in
            _ = try await Self.push("label", registry.address + "/team/label:1.0", layout: layout)
            _ = try await Self.push("netlabel", registry.address + "/team/netlabel:1.0", layout: layout)
            let state = place.dir + "-state"
            let daemon = try await place.startDaemon(["--image-policy", policy])
            try await whileRunning(daemon) { () async throws in
                let plugins = try await place.cli(["plugin", "ls", "-q"]).out
                func refused(_ arguments: [String], _ expected: [String]) async throws {
                    let r = try await place.cli(["plugin", "install"] + arguments)
                    #expect(r.status != .exited(0), "install \(arguments) should fail: \(r.out)")
                    for text in expected { #expect(r.err.contains(text), "install \(arguments): \(r.err)") }
                    #expect(try await place.cli(["plugin", "ls", "-q"]).out == plugins, "nothing installed after \(arguments)")
                    #expect(Self.imageFiles(state).isEmpty, "no files left after \(arguments): \(Self.imageFiles(state))")
                }
                try await refused(["Not A/Reference"], ["is not an image reference"])
                try await refused([registry.address + "/team/label@sha256:1234"], ["is not an image reference", "64 lowercase hex"])
                try await refused([registry.address + "/team/label:missing"], ["cannot pull", "no such image or tag"])
                try await refused([registry.address + "/team/nothing-here:1.0"], ["cannot pull"])
                try await refused([registry.address + "/team/label@sha256:" + String(repeating: "0", count: 64)], ["cannot pull"])
                // Privileges: refused exactly as plugin add --container refuses.
                try await refused([registry.address + "/team/netlabel:1.0"], [
                    "container plugin netlabel asks for privileges that were not granted", "  - network=host", "--grant-all-permissions",
                ])
                // A corrupt layer (bytes changed in the layout's blob): skopeo's digest check.
                let corrupt = work + "/corrupt"
                // Only the tiny image's files: a layout of its own.
                let copied = try await runCommand("/usr/bin/skopeo", ["--insecure-policy", "copy", "--quiet", "oci:\(layout):tiny", "oci:\(corrupt):tiny"])
                #expect(copied.status == .exited(0), "\(copied.err)")
                let layer = try Self.layerDigest(corrupt, tag: "tiny")
                let blob = try #require(FileHandle(forUpdatingAtPath: corrupt + "/blobs/sha256/" + layer.dropFirst(7)))
                try blob.seek(toOffset: 600)
                try blob.write(contentsOf: Data("garbage!".utf8))
                try blob.close()
                // (The layout transport is under the signature policy: this one is allowed by --alias on
                // a daemon without it, below; here the policy refuses it first.)
                try await refused(["oci:\(corrupt):tiny"], ["refused by the signature policy", "signature"])
                // A registry that goes away in the middle of the layer.
                let dying = try DyingRegistry(layout: layout, tag: "tiny", cutBlob: try Self.layerDigest(layout, tag: "tiny"))
                defer { dying.stop() }
                try await refused(["127.0.0.1:\(dying.port)/team/tiny:1.0"], ["cannot pull"])
                #expect(dying.cut.withLockedValue { $0 }, "the pull got as far as the layer")
                // Granted, the privileged image installs; plugin rm leaves no file behind.
                let granted = try await place.cli(["plugin", "install", registry.address + "/team/netlabel:1.0", "--grant", "network=host", "--alias", "net"])
                #expect(granted.status == .exited(0) && granted.out.contains("net active"), "\(granted.err)")
                #expect(Self.imageFiles(state).count == 1)
                #expect(try await place.cli(["plugin", "rm", "net"]).status == .exited(0))
                #expect(Self.imageFiles(state).isEmpty)
            }
            await place.stop(daemon)
            // Without the policy, the corrupt layer itself is the error.
            let other = DaemonPlace("image-corrupt")
            let second = try await other.startDaemon()
            try await whileRunning(second) { () async throws in
                let plugins = try await other.cli(["plugin", "ls", "-q"]).out
                let r = try await other.cli(["plugin", "install", "oci:\(work)/corrupt:tiny"])
                #expect(r.status != .exited(0))
                #expect(r.err.contains("does not match its digest: the image is corrupt"), "\(r.err)")
                #expect(try await other.cli(["plugin", "ls", "-q"]).out == plugins)
                #expect(Self.imageFiles(other.dir + "-state").isEmpty)
            }
            await other.stop(second)
        }
    }

    @Test("signatures: under a policy wanting GPG signatures, an image signed by the key passes; one signed by another key, an unsigned one and one from a repository the policy rejects are refused, nothing left")
    func signatures() async throws {
        try #require(getuid() == 0, Comment(rawValue: Self.root))
        let place = DaemonPlace("image-signed")
        let work = place.dir + "-work"
        try FileManager.default.createDirectory(atPath: work + "/sigs", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let layout = try await Images.shared.layout()
        // Two keys, each in a keyring of its own; the policy trusts the first.
        func key(_ n: Int) async throws -> String {
            let home = work + "/gnupg\(n)"
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nName-Real: plugboard test \(n)\nExpire-Date: 0\n%commit\n".write(toFile: work + "/keyspec", atomically: true, encoding: .utf8)
            let env = ["PATH": "/usr/bin:/bin", "GNUPGHOME": home]
            let gen = try await runCommand("/usr/bin/gpg", ["--batch", "--gen-key", work + "/keyspec"], environment: env)
            try #require(gen.status == .exited(0), "gpg --gen-key: \(gen.err)")
            let list = try await runCommand("/usr/bin/gpg", ["--list-keys", "--with-colons"], environment: env)
            let fingerprint = try #require(list.out.split(separator: "\n").first { $0.hasPrefix("fpr:") }?.split(separator: ":", omittingEmptySubsequences: false)[9])
            let export = try await runCommand("/bin/sh", ["-c", "gpg --export \(fingerprint) > \(work)/key\(n).gpg"], environment: env)
            try #require(export.status == .exited(0), "gpg --export: \(export.err)")
            return String(fingerprint)
        }
        let trusted = try await key(1)
        let other = try await key(2)
        try await Self.withRegistry { registry in
            // Signatures are kept in a lookaside directory that registries.d names for this registry.
            try FileManager.default.createDirectory(atPath: work + "/registries.d", withIntermediateDirectories: true)
            try "docker:\n  \(registry.address):\n    sigstore: file://\(work)/sigs\n    sigstore-staging: file://\(work)/sigs\n"
                .write(toFile: work + "/registries.d/test.yaml", atomically: true, encoding: .utf8)
            func push(_ reference: String, signedBy fingerprint: String?, keyring: Int) async throws {
                let sign = fingerprint.map { ["--sign-by", $0, "--registries-d", work + "/registries.d"] } ?? []
                let r = try await runCommand(try builtExecutable("plugboard"), ["plugin", "push", "tiny", reference, "--layout", layout] + sign,
                                             environment: ["PATH": "/usr/bin:/bin", "GNUPGHOME": work + "/gnupg\(keyring)"])
                try #require(r.status == .exited(0), "push \(reference): \(r.err)")
            }
            try await push(registry.address + "/signed/tiny:1.0", signedBy: trusted, keyring: 1)
            try await push(registry.address + "/wrong/tiny:1.0", signedBy: other, keyring: 2)
            try await push(registry.address + "/unsigned/tiny:1.0", signedBy: nil, keyring: 1)
            try await push(registry.address + "/elsewhere/tiny:1.0", signedBy: trusted, keyring: 1)
            let policy = """
                {"default": [{"type": "reject"}], "transports": {"docker": {
                  "\(registry.address)/signed": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "\(work)/key1.gpg"}],
                  "\(registry.address)/wrong": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "\(work)/key1.gpg"}],
                  "\(registry.address)/unsigned": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "\(work)/key1.gpg"}]}}}
                """
            try policy.write(toFile: work + "/policy.json", atomically: true, encoding: .utf8)
            let state = place.dir + "-state"
            let daemon = try await place.startDaemon(["--image-policy", work + "/policy.json", "--image-registries-d", work + "/registries.d"])
            try await whileRunning(daemon) { () async throws in
                let plugins = try await place.cli(["plugin", "ls", "-q"]).out
                for (repository, expected) in [("wrong", "Invalid GPG signature"), ("unsigned", "no signature exists"), ("elsewhere", "is rejected by policy")] {
                    let r = try await place.cli(["plugin", "install", registry.address + "/\(repository)/tiny:1.0"])
                    #expect(r.status != .exited(0))
                    #expect(r.err.contains("refused by the signature policy") && r.err.contains(expected), "\(repository): \(r.err)")
                    #expect(try await place.cli(["plugin", "ls", "-q"]).out == plugins)
                    #expect(Self.imageFiles(state).isEmpty, "\(Self.imageFiles(state))")
                }
                // The signed one passes the policy; tiny is no plugin (busybox sh never says HELLO), so
                // it then fails to start — after the signature check, which is what is tested here.
                let signed = try await place.cli(["plugin", "install", registry.address + "/signed/tiny:1.0"])
                #expect(!signed.err.contains("signature"), "\(signed.err)")
                #expect(signed.err.contains("tiny"), "\(signed.err)")
                #expect(Self.imageFiles(state).isEmpty, "a start that fails leaves no files: \(Self.imageFiles(state))")
            }
            await place.stop(daemon)
        }
    }

    /// The manifest digest of the image tagged `tag` in `layout`.
    static func digest(_ layout: String, tag: String) throws -> String {
        let index = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: layout + "/index.json"))) as? [String: Any])
        let entry = try #require((index["manifests"] as? [[String: Any]])?.first { (($0["annotations"] as? [String: Any])?["org.opencontainers.image.ref.name"] as? String) == tag })
        return try #require(entry["digest"] as? String)
    }

    /// The first layer's digest of the image tagged `tag` in `layout`.
    static func layerDigest(_ layout: String, tag: String) throws -> String {
        let index = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: layout + "/index.json"))) as? [String: Any])
        let entry = try #require((index["manifests"] as? [[String: Any]])?.first { (($0["annotations"] as? [String: Any])?["org.opencontainers.image.ref.name"] as? String) == tag })
        let digest = try #require(entry["digest"] as? String)
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: layout + "/blobs/sha256/" + digest.dropFirst(7)))) as? [String: Any])
        return try #require(((manifest["layers"] as? [[String: Any]])?.first?["digest"]) as? String)
    }

    @Test("exec upgrade under load from four clients: zero failed calls, the version changes once; a failing new version: zero failed calls, the version unchanged, the error reported")
    func execUpgrade() async throws {
        let place = DaemonPlace("upgrade-exec")
        let daemon = try await place.startDaemon()
        let plugin = try builtExecutable("plugboard-test-plugin")
        try await whileRunning(daemon) { () async throws in
            let added = try await place.cli(["plugin", "add", "svc", "--exec", "\(plugin) version=1 provides=svc.work"])
            try #require(added.status == .exited(0), "\(added.err)")
            _ = try await place.cli(["call", "state.put", #"{"namespace": "svc", "key": "k", "value": "kept"}"#])
            let load = Load(place: place, job: "svc.version", clients: 4)
            try await load.waitForCalls(2)
            let upgraded = try await place.cli(["plugin", "upgrade", "svc", "--exec", "\(plugin) version=2 provides=svc.work"])
            try await load.waitForCalls(3)
            #expect(upgraded.status == .exited(0), "\(upgraded.err)")
            #expect(upgraded.out.contains("svc upgraded 1 -> 2"), "\(upgraded.out)")
            #expect(load.failures.withLockedValue { $0 }.isEmpty, "\(load.failures.withLockedValue { $0 })")
            #expect(load.changes == [1, 1, 1, 1], "\(load.answers.withLockedValue { $0 })")
            #expect(load.answers.withLockedValue { $0 }.allSatisfy { $0.first == "1" && $0.last == "2" })

            // A new version that dies before its declaration: rolled back, nobody noticed.
            let before = load.answers.withLockedValue { $0.map(\.count) }
            let failed = try await place.cli(["plugin", "upgrade", "svc", "--exec", "\(plugin) version=3 crash-at-start"])
            #expect(failed.status != .exited(0))
            #expect(failed.err.contains("upgrade of plugin svc failed; the old version (2) serves on"), "\(failed.err)")
            // One that declares but drops a job: refused, rolled back.
            let dropped = try await place.cli(["plugin", "upgrade", "svc", "--exec", "\(plugin) version=4"])
            #expect(dropped.status != .exited(0))
            #expect(dropped.err.contains("no longer registers job svc.work"), "\(dropped.err)")
            try await load.waitForCalls(3)
            await load.stop()
            #expect(load.failures.withLockedValue { $0 }.isEmpty, "\(load.failures.withLockedValue { $0 })")
            #expect(load.answers.withLockedValue { $0 }.enumerated().allSatisfy { i, a in a.dropFirst(before[i]).allSatisfy { $0 == "2" } },
                    "the version stayed 2: \(load.answers.withLockedValue { $0 })")
            // Same plugin: its state, its name, one process.
            #expect(try await place.cli(["call", "state.get", #"{"namespace": "svc", "key": "k"}"#]).out.contains("kept"))
            let inspect = try await place.cli(["plugin", "inspect", "svc"])
            #expect(inspect.out.contains("version=2") && inspect.out.contains("\"active\""), "\(inspect.out)")
            let names = try await place.cli(["plugin", "ls", "-q"]).out.split(separator: "\n")
            #expect(names.filter { $0 == "svc" }.count == 1, "\(names)")
        }
        // Recorded: the upgraded command is what starts after a restart.
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
        let again = try await Daemon.startReady(socket: place.socket, stateDirectory: place.dir + "-state", ["--plugin", "echo"])
        try await whileRunning(again) { () async throws in
            #expect(try await place.cli(["call", "svc.version"]).out.contains("2"))
        }
        await place.stop(again)
    }
}
