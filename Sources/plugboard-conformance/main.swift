import ArgumentParser
import Conformance
import Logging

/// `plugboard-conformance [options] -- COMMAND [ARGS...]`: the conformance kit on its own,
/// for plugin authors without the CLI. `plugboard plugin test` runs the same code.
@main
struct PlugboardConformance: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboard-conformance",
        abstract: "Check that a plugin executable, in any language, speaks the Plugboard protocol (docs/CONFORMANCE.md).",
        discussion: """
            Runs COMMAND with its session on fds 3 and 4, as plugboardd does, without a daemon, and plays the engine through every case of docs/CONFORMANCE.md: the handshake, its declaration, a call of each job and hook, every msgpack type echoed, flow control, channel ends, a call given up on, hostile input, GOAWAY and end of file. One line per case, then "N passed, M failed". Exit status 0 when every case passed, 1 otherwise.
            """
    )

    @OptionGroup var arguments: ConformanceArguments

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        let status = try await arguments.runAndPrint(logger: Logger(label: "plugboard-conformance"))
        if status != 0 { throw ExitCode(status) }
    }
}
