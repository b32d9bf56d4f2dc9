#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import AdminProtocol
import Foundation
import Logging

@main
struct Plugboard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboard",
        abstract: "Manage a running plugboardd through its admin socket.",
        discussion: "Every command acts on the running daemon: add a plugin, call its job, disable it, remove it — plugboardd never restarts. The socket is --socket, else $PLUGBOARD_SOCKET, else the daemon's default path.",
        subcommands: [PluginGroup.self, ContainerGroup.self, Call.self, Endpoints.self, HooksList.self, PipelineGroup.self, Events.self, MetricsCommand.self]
    )
}

/// Where the daemon is.
struct Connection: ParsableArguments {
    @Option(help: ArgumentHelp("The admin socket (default: $PLUGBOARD_SOCKET, else the daemon's default).", valueName: "path"))
    var socket: String?

    var path: String {
        socket ?? ProcessInfo.processInfo.environment["PLUGBOARD_SOCKET"] ?? AdminSocket.defaultPath()
    }

    /// Sends one admin request and returns its reply, or throws an error a person can act on.
    func send<R: AdminRequest>(_ request: R) async throws -> R.Reply {
        try R.decodeReply(try await self.request(try request.wireBody()))
    }

    /// Sends one admin request body and returns the `ok` value.
    private func request(_ body: Value) async throws -> Value {
        let (session, channel) = try await open()
        defer { session.close(reason: "done") }
        do {
            return try await channel.request(body, timeout: .seconds(60))
        } catch let error as ChanError where error.code == .remote {
            // The code travels with the message: scripts can match on it.
            throw CLIError("\(error.reason) [\(error.remoteCode ?? "unknown")]")
        }
    }

    func open() async throws -> (Session, Sender) {
        let logger = Logger(label: "plugboard", factory: { _ in SwiftLogNoOpLogHandler() })
        var info = stat()
        if stat(path, &info) != 0 {
            throw CLIError("plugboardd is not running: nothing at \(path) (use --socket or PLUGBOARD_SOCKET if it listens elsewhere)")
        }
        let session: Session
        do {
            session = try await Session.connect(unixSocketPath: path, configuration: .init(name: "plugboard", handshakeTimeout: .seconds(5)), logger: logger)
        } catch {
            let text = "\(error)"
            if text.contains("Permission denied") || text.contains("EACCES") {
                throw CLIError("permission denied on \(path): run as the daemon's user or root")
            }
            throw CLIError("plugboardd is not running: cannot connect to \(path) (\(text))")
        }
        do {
            try await session.start()
        } catch let error as ChanError where error.code == .peerGone {
            throw CLIError("plugboardd at \(path) refused this connection: uid \(getuid()) is not allowed (only root, the daemon's user and --admin-group)")
        } catch {
            throw CLIError("plugboardd at \(path) did not complete the handshake: \(error)")
        }
        return (session, try session.open(label: "admin"))
    }
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Output as JSON (a Value's, or a reply's, Codable form).
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

/// A table with left-aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i] + 3, withPad: " ", startingAt: 0) }.joined()
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

func text(_ v: Value?) -> String {
    switch v {
    case .none, .nil?: return "-"
    case .string(let s)?: return s
    case let other?: return other.description
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}
