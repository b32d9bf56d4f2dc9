#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOConcurrencyHelpers
import Spawn
import Testing
import TestSupport

/// A Docker registry on 127.0.0.1 for the image tests: the one `make test` started
/// (`PLUGBOARD_TEST_REGISTRY`, `.ci/with-registry`), or one of the test's own (Debian's
/// docker-registry on a free port, with a temporary storage), stopped by ``stop()``.
struct TestRegistry {
    /// `127.0.0.1:PORT`.
    let address: String
    /// The registry's storage directory (blobs under docker/registry/v2/blobs).
    let storage: String
    private let process: SpawnedProcess?
    private let directory: String?

    static func start() async throws -> TestRegistry {
        let env = ProcessInfo.processInfo.environment
        if let address = env["PLUGBOARD_TEST_REGISTRY"], !address.isEmpty {
            return TestRegistry(address: address, storage: env["PLUGBOARD_TEST_REGISTRY_STORAGE"] ?? "", process: nil, directory: nil)
        }
        let registry = "/usr/bin/docker-registry"
        try #require(FileManager.default.isExecutableFile(atPath: registry), "the image tests need Debian's docker-registry (make deps installs it)")
        let dir = "/tmp/plugboard-registry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for _ in 0..<10 {
            let port = try freePort()
            let config = """
                version: 0.1
                log:
                  level: error
                storage:
                  filesystem:
                    rootdirectory: \(dir)/storage
                http:
                  addr: 127.0.0.1:\(port)

                """
            try config.write(toFile: dir + "/config.yml", atomically: true, encoding: .utf8)
            let null = open("/dev/null", O_WRONLY)
            let process = try ProcessSpawner.spawn(SpawnOptions(
                executable: registry, arguments: ["serve", dir + "/config.yml"], environment: childEnvironment(["PATH": "/usr/bin:/bin"]),
                fileDescriptors: [1: null, 2: null]
            ))
            close(null)
            // Up when it accepts a connection; gone when the port was taken after all.
            let up = try await withDeadline(20, "docker-registry listening") { () -> Bool in
                while process.exitStatus == nil {
                    if canConnect(port: port) { return true }
                    try await Task.sleep(for: .milliseconds(20))
                }
                return false
            }
            if up { return TestRegistry(address: "127.0.0.1:\(port)", storage: dir + "/storage", process: process, directory: dir) }
            _ = await process.waitForExit()
        }
        throw RegistryError(message: "docker-registry did not start on a free port in 10 attempts")
    }

    struct RegistryError: Error { let message: String }

    /// Stops the test's own registry and removes its storage (nothing for the shared one).
    func stop() async {
        guard let process else { return }
        process.signal(SIGTERM)
        if await process.waitForExit(timeout: .seconds(5)) == nil {
            process.signal(SIGKILL)
            _ = await process.waitForExit()
        }
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }
}

/// A TCP port nobody listens on now (bound to port 0, read back, closed).
func freePort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    guard bound == 0 else { throw TestRegistry.RegistryError(message: "bind: \(errno)") }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return UInt16(bigEndian: address.sin_port)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
func canConnect(port: UInt16) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = port.bigEndian
    return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
}

/// A registry that goes away in the middle of a pull: it serves the image tagged `tag` of an OCI
/// layout (the distribution API's GETs and HEADs: /v2/, manifests, blobs), but answers the
/// request for the blob `cutBlob` with its full Content-Length, half its bytes, and then
/// closes the connection and stops listening.
final class DyingRegistry: @unchecked Sendable {
    let port: UInt16
    private let listener: Int32
    private let layout: String
    private let tag: String
    private let cutBlob: String
    private let stopped = NIOLockedValueBox(false)
    /// Whether the cut happened (the pull got that far).
    let cut = NIOLockedValueBox(false)

    init(layout: String, tag: String, cutBlob: String) throws {
        self.layout = layout
        self.tag = tag
        self.cutBlob = cutBlob
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = UInt16(bigEndian: address.sin_port)
        listen(fd, 16)
        listener = fd
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    func stop() {
        // Once: a second close could close an fd number reused meanwhile.
        let first = stopped.withLockedValue { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func acceptLoop() {
        while !stopped.withLockedValue({ $0 }) {
            let fd = accept(listener, nil, nil)
            if fd < 0 { return }
            Thread.detachNewThread { [self] in serve(fd) }
        }
    }

    private func readRequest(_ fd: Int32) -> String? {
        var data: [UInt8] = []
        var byte: UInt8 = 0
        while read(fd, &byte, 1) == 1 {
            data.append(byte)
            if data.suffix(4) == [13, 10, 13, 10] { return String(decoding: data, as: UTF8.self) }
        }
        return nil
    }

    private func send(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            offset += n
        }
    }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        // skopeo tries HTTPS first on a registry it may speak HTTP to: a TLS hello is closed
        // at once, and it falls back to HTTP.
        var first: UInt8 = 0
        guard recv(fd, &first, 1, Int32(MSG_PEEK)) == 1, first != 0x16 else { return }
        while let request = readRequest(fd) {
            let line = request.split(separator: "\r\n").first.map(String.init) ?? ""
            let parts = line.split(separator: " ").map(String.init)
            guard parts.count >= 2 else { return }
            let head = parts[0] == "HEAD"
            let path = parts[1]
            var body: [UInt8] = []
            var type = "application/json"
            var headers = ""
            var status = "200 OK"
            if path == "/v2/" {
                body = Array("{}".utf8)
            } else if let range = path.range(of: "/manifests/") {
                // The one manifest, whatever the tag or digest asked.
                let index = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: layout + "/index.json")))) as? [String: Any]
                let entry = (index?["manifests"] as? [[String: Any]])?.first { (($0["annotations"] as? [String: Any])?["org.opencontainers.image.ref.name"] as? String) == tag }
                let digest = (entry?["digest"] as? String) ?? ""
                _ = range
                body = Array((try? Data(contentsOf: URL(fileURLWithPath: layout + "/blobs/sha256/" + digest.dropFirst(7)))) ?? Data())
                type = "application/vnd.oci.image.manifest.v1+json"
                headers = "Docker-Content-Digest: \(digest)\r\n"
            } else if let range = path.range(of: "/blobs/") {
                let digest = String(path[range.upperBound...])
                if let data = try? Data(contentsOf: URL(fileURLWithPath: layout + "/blobs/sha256/" + digest.dropFirst(7))) {
                    body = Array(data)
                    type = "application/octet-stream"
                    headers = "Docker-Content-Digest: \(digest)\r\n"
                } else {
                    status = "404 Not Found"
                }
                if digest == cutBlob, !head {
                    send(fd, Array("HTTP/1.1 200 OK\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\n\(headers)\r\n".utf8))
                    send(fd, Array(body.prefix(body.count / 2)))
                    cut.withLockedValue { $0 = true }
                    stop()
                    return
                }
            } else {
                status = "404 Not Found"
            }
            send(fd, Array("HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\n\(headers)Docker-Distribution-API-Version: registry/2.0\r\n\r\n".utf8))
            if !head { send(fd, body) }
        }
    }
}
