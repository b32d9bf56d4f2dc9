import AdminProtocol
import ArgumentParser
import Chan
import Foundation

/// Shell completion of names the running daemon knows: plugins, jobs and extension points,
/// containers. Each asks the daemon (the socket the command line being completed names,
/// else `$PLUGBOARD_SOCKET`, else the default) with a short deadline, and completes nothing
/// when it cannot.
enum DaemonNames {
    /// How long a completion may wait for the daemon: the HELLO, then the request.
    static let deadline: Duration = .seconds(1)

    /// Plugin names.
    static let plugins: CompletionKind = .custom { words, _, prefix in
        await names(words, prefix) { client in try await client.send(Admin.PluginList(), timeout: deadline).map(\.name) }
    }

    /// Jobs and extension points.
    static let jobs: CompletionKind = .custom { words, _, prefix in
        await names(words, prefix) { client in try await client.send(Admin.Endpoints(), timeout: deadline).map(\.job) }
    }

    /// Container names and ids (the containers plugin's `container.ls`).
    static let containers: CompletionKind = .custom { words, _, prefix in
        await names(words, prefix) { client in
            let rows = try await client.send(Admin.Call(job: "container.ls", timeoutMilliseconds: deadline.saturatingMilliseconds), timeout: deadline)
            return (rows.arrayValue ?? []).flatMap { row in [row["name"]?.stringValue, row["id"]?.stringValue].compactMap { $0 } }
        }
    }

    /// The names `fetch` returns from the daemon the command line names, those starting
    /// with `prefix`, each once, sorted; none when the daemon cannot be asked.
    static func names(_ words: [String], _ prefix: String, _ fetch: @Sendable (AdminClient) async throws -> [String]) async -> [String] {
        var client = AdminClient(path: AdminClient.path(given: socket(in: words)))
        client.handshakeTimeout = deadline
        guard let all = try? await fetch(client) else { return [] }
        return Array(Set(all.filter { $0.hasPrefix(prefix) })).sorted()
    }

    /// The socket the words being completed give: `--socket P`, `--socket=P` or `-H P`.
    static func socket(in words: [String]) -> String? {
        var found: String?
        for (i, word) in words.enumerated() {
            if word.hasPrefix("--socket=") { found = String(word.dropFirst("--socket=".count)) }
            if (word == "--socket" || word == "-H"), i + 1 < words.count { found = words[i + 1] }
        }
        return found
    }
}
