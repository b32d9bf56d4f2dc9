import Foundation

/// Where a plugin image comes from: an image in an OCI registry
/// (`registry.example:5000/team/label:1.2`, `...@sha256:HEX`) or an OCI image layout
/// directory on the daemon's host (`oci:DIR[:TAG]`).
public struct ImageReference: Sendable, Hashable, CustomStringConvertible {
    /// The two kinds of source.
    public enum Source: Sendable, Hashable {
        /// `HOST[:PORT]/PATH[:TAG][@sha256:HEX]`.
        case registry(host: String, repository: String, tag: String?, digest: String?)
        /// `oci:DIR[:TAG]`, DIR absolute.
        case layout(directory: String, tag: String?)
    }

    /// What was parsed.
    public let source: Source

    /// The reference as written back (the form `plugin ls` shows).
    public var description: String {
        switch source {
        case .registry(let host, let repository, let tag, let digest):
            return host + "/" + repository + (tag.map { ":" + $0 } ?? "") + (digest.map { "@" + $0 } ?? "")
        case .layout(let directory, let tag):
            return "oci:" + directory + (tag.map { ":" + $0 } ?? "")
        }
    }

    /// The digest the user asked for (`@sha256:...`), which the pull must match.
    public var pinnedDigest: String? {
        if case .registry(_, _, _, let digest) = source { return digest }
        return nil
    }

    /// A name for the plugin when none is given: the last component of the repository, or
    /// the layout's tag (else its directory's name).
    public var suggestedName: String {
        switch source {
        case .registry(_, let repository, _, _):
            return String(repository.split(separator: "/").last ?? Substring(repository))
        case .layout(let directory, let tag):
            return tag ?? URL(fileURLWithPath: directory).lastPathComponent
        }
    }

    /// Whether the registry is on this host (127.0.0.0/8, ::1, localhost): like Docker, such a
    /// registry is spoken to over plain HTTP; every other one over verified HTTPS.
    public var isLoopbackRegistry: Bool {
        guard case .registry(let host, _, _, _) = source else { return false }
        return Self.isLoopback(host: host)
    }

    /// Whether `host` (with or without a port) names this machine.
    public static func isLoopback(host: String) -> Bool {
        var h = host
        if h.hasPrefix("[") , let end = h.firstIndex(of: "]") { return h[h.index(after: h.startIndex)..<end] == "::1" }
        if let colon = h.lastIndex(of: ":") { h = String(h[..<colon]) }
        return h == "localhost" || h.hasPrefix("127.")
    }

    /// The source argument for skopeo (`docker://...` or `oci:DIR[:TAG]`).
    public var skopeoSource: String {
        switch source {
        case .registry: return "docker://" + description
        case .layout: return description
        }
    }

    /// Parses `text`; the error says which form is expected and what is wrong.
    public init(_ text: String) throws {
        func bad(_ why: String) -> ContainerError {
            ContainerError(.badImageReference, "\(text.isEmpty ? "\"\"" : text) is not an image reference: \(why); write HOST[:PORT]/NAME[:TAG][@sha256:DIGEST] or oci:DIR[:TAG]")
        }
        if text.hasPrefix("oci:") {
            let rest = String(text.dropFirst(4))
            var directory = rest
            var tag: String?
            if let colon = rest.lastIndex(of: ":") {
                directory = String(rest[..<colon])
                tag = String(rest[rest.index(after: colon)...])
            }
            guard directory.hasPrefix("/") else { throw bad("the layout directory must be an absolute path") }
            if let tag, !Self.isTag(tag) { throw bad("\"\(tag)\" is not a valid tag") }
            source = .layout(directory: directory, tag: tag)
            return
        }
        var rest = text.hasPrefix("docker://") ? String(text.dropFirst("docker://".count)) : text
        var digest: String?
        if let at = rest.firstIndex(of: "@") {
            let d = String(rest[rest.index(after: at)...])
            guard Self.isDigest(d) else { throw bad("the digest must be sha256: and 64 lowercase hex digits, not \"\(d)\"") }
            digest = d
            rest = String(rest[..<at])
        }
        guard let slash = rest.firstIndex(of: "/") else { throw bad("it names no registry (HOST[:PORT]/...)") }
        let host = String(rest[..<slash])
        var path = String(rest[rest.index(after: slash)...])
        guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || ".-:[]".contains($0) }), host.first != ":" else {
            throw bad("\"\(host)\" is not a registry host")
        }
        var tag: String?
        if let colon = path.lastIndex(of: ":") {
            tag = String(path[path.index(after: colon)...])
            path = String(path[..<colon])
            guard let t = tag, Self.isTag(t) else { throw bad("\"\(tag ?? "")\" is not a valid tag") }
        }
        let components = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.isEmpty, components.allSatisfy({ c in
            !c.isEmpty && c.allSatisfy { ($0.isLowercase && $0.isASCII) || ($0.isNumber && $0.isASCII) || "._-".contains($0) }
                && c.first.map { $0.isLetter || $0.isNumber } == true
        }) else {
            throw bad("the repository \"\(path)\" must be lowercase components of letters, digits, '.', '_' and '-', separated by '/'")
        }
        if tag == nil, digest == nil { tag = "latest" }
        source = .registry(host: host, repository: path, tag: tag, digest: digest)
    }

    static func isTag(_ t: String) -> Bool {
        guard let first = t.first, t.count <= 128, first.isASCII, first.isLetter || first.isNumber || first == "_" else { return false }
        return t.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }
    }

    /// Whether `d` is `sha256:` and 64 lowercase hex digits.
    public static func isDigest(_ d: String) -> Bool {
        guard d.hasPrefix("sha256:") else { return false }
        let hex = d.dropFirst(7)
        return hex.count == 64 && hex.allSatisfy { "0123456789abcdef".contains($0) }
    }
}
