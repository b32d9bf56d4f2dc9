#if canImport(Glibc)
import Glibc
#endif
import Remote

/// Who may connect in as one remote plugin: on a unix socket, a peer whose uid or gid is
/// listed (SO_PEERCRED); over TCP, a client certificate (already verified against the CA
/// bundle during the TLS handshake) whose subject's common name is one of
/// ``allowedCertificateNames(for:)``.
public struct RemoteAccess: Sendable, Hashable {
    /// User ids allowed on a unix socket.
    public var uids: Set<UInt32>
    /// Group ids allowed on a unix socket (the peer's primary group, as the kernel reports it).
    public var gids: Set<UInt32>
    /// Common names a client certificate may carry for this plugin; empty means the
    /// plugin's own name only.
    public var certificateNames: Set<String>

    /// An allow-list; with nothing in it, only a certificate named after the plugin gets in.
    public init(uids: Set<UInt32> = [], gids: Set<UInt32> = [], certificateNames: Set<String> = []) {
        self.uids = uids
        self.gids = gids
        self.certificateNames = certificateNames
    }

    /// The certificate names that may connect as `plugin`, sorted.
    public func allowedCertificateNames(for plugin: String) -> [String] {
        certificateNames.isEmpty ? [plugin] : certificateNames.sorted()
    }

    /// Why `peer` may not connect as `plugin`, or nil when it may.
    public func refusal(of peer: RemotePeer, as plugin: String) -> String? {
        switch peer.identity {
        case .credentials(let c):
            if uids.contains(c.uid) || gids.contains(c.gid) { return nil }
            if uids.isEmpty && gids.isEmpty {
                return "plugin \(plugin) may not connect over a unix socket: its allow-list names no uid or gid"
            }
            return "uid \(c.uid) gid \(c.gid) may not connect as plugin \(plugin) (allowed: \(describeIDs()))"
        case .certificate(let commonName):
            let allowed = allowedCertificateNames(for: plugin)
            guard let commonName else {
                return "the client certificate has no common name; plugin \(plugin) needs CN=\(allowed.joined(separator: " or CN="))"
            }
            if allowed.contains(commonName) { return nil }
            return "the client certificate names \(commonName), which may not connect as plugin \(plugin) (allowed: CN=\(allowed.joined(separator: ", CN=")))"
        }
    }

    private func describeIDs() -> String {
        let parts = uids.sorted().map { "uid \($0)" } + gids.sorted().map { "gid \($0)" }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }
}

extension PluginSpec {
    /// Whether it connects in rather than being started.
    public var isRemote: Bool {
        if case .remote = kind { return true }
        return false
    }
}
