/// Where a remote plugin connects, or where plugboardd listens for them: `unix:/path` or
/// `tcp://HOST:PORT` (an IPv6 host in brackets: `tcp://[::1]:7070`).
public enum RemoteEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// A unix stream socket at this path.
    case unix(path: String)
    /// A TCP address (host name or literal) and port.
    case tcp(host: String, port: Int)

    /// Parses `unix:/path` or `tcp://HOST:PORT`; the error says what is wrong.
    public init(parsing text: String) throws(RemoteEndpointError) {
        if text.hasPrefix("unix:") {
            var path = String(text.dropFirst("unix:".count))
            if path.hasPrefix("//") { path = String(path.dropFirst(2)) }
            guard !path.isEmpty else { throw RemoteEndpointError(text, "a unix endpoint needs a path: unix:/run/plugboard/plugins.sock") }
            self = .unix(path: path)
            return
        }
        guard text.hasPrefix("tcp://") else {
            throw RemoteEndpointError(text, "expected unix:/PATH or tcp://HOST:PORT")
        }
        let rest = String(text.dropFirst("tcp://".count))
        let host: String
        let portText: String
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw RemoteEndpointError(text, "an IPv6 host needs its closing bracket: tcp://[::1]:7070") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            guard after.hasPrefix(":") else { throw RemoteEndpointError(text, "expected :PORT after the host") }
            portText = String(after.dropFirst())
        } else {
            guard let colon = rest.lastIndex(of: ":") else { throw RemoteEndpointError(text, "expected tcp://HOST:PORT") }
            host = String(rest[..<colon])
            portText = String(rest[rest.index(after: colon)...])
        }
        guard !host.isEmpty else { throw RemoteEndpointError(text, "the host is empty (tcp://0.0.0.0:PORT listens on every address)") }
        guard let port = Int(portText), (0...65535).contains(port) else { throw RemoteEndpointError(text, "the port must be a number from 0 to 65535") }
        self = .tcp(host: host, port: port)
    }

    /// `unix:/path` or `tcp://HOST:PORT`, as parsed.
    public var description: String {
        switch self {
        case .unix(let path): return "unix:\(path)"
        case .tcp(let host, let port): return host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        }
    }
}

/// An endpoint that does not parse.
public struct RemoteEndpointError: Error, Sendable, CustomStringConvertible {
    /// The text given.
    public var text: String
    /// What is wrong with it.
    public var reason: String

    init(_ text: String, _ reason: String) {
        self.text = text
        self.reason = reason
    }

    /// `endpoint "TEXT": REASON`.
    public var description: String { "endpoint \"\(text)\": \(reason)" }
}
