import ArgumentParser
import Conformance
import Logging

extension PluginGroup {
    /// `plugboard plugin test -- COMMAND [ARGS...]`: the conformance kit, run in this process
    /// (the same library as `plugboard-conformance`). It needs no daemon.
    struct Test: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check that a plugin executable speaks the protocol, without a daemon (docs/CONFORMANCE.md).",
            discussion: """
                Runs COMMAND with its session on fds 3 and 4, as plugboardd does, and plays the engine through every case of docs/CONFORMANCE.md. One line per case (PASS name, FAIL name: what it did wrong, SKIP name: why), then "N passed, M failed"; --format json for CI. Exit status 0 when every case passed, 1 otherwise.

                  plugboard plugin test -- python3 my-plugin.py
                  plugboard plugin test --format json -- plugboard-sh plugins/shell/add-env.sh X=1
                """
        )

        @OptionGroup var arguments: ConformanceArguments

        func run() async throws {
            let status = try await arguments.runAndPrint(logger: Logger(label: "plugboard.conformance"))
            if status != 0 { throw ExitCode(status) }
        }
    }
}
