import ArgumentParser

/// `--plugin NAME OPTION` is rewritten to `--plugin NAME=OPTION` before parsing, so both
/// spellings of the design's example work.
func rewritePluginArguments(_ arguments: [String]) -> [String] {
    var out: [String] = []
    var i = 0
    while i < arguments.count {
        let a = arguments[i]
        if a == "--plugin", i + 2 < arguments.count, !arguments[i + 1].contains("="), !arguments[i + 2].hasPrefix("-") {
            out.append(a)
            out.append(arguments[i + 1] + "=" + arguments[i + 2])
            i += 3
            continue
        }
        out.append(a)
        i += 1
    }
    return out
}

@main
enum Main {
    static func main() async {
        // First, while this is the only thread: plugins inherit the environment.
        SystemdNotify.takeSocketFromEnvironment()
        let arguments = rewritePluginArguments(Array(CommandLine.arguments.dropFirst()))
        do {
            var command = try Plugboardd.parseAsRoot(arguments)
            // Before anything opens a descriptor: the daemon's limit is its hard limit.
            if let daemon = command as? Plugboardd { DescriptorLimit.raise(logger: daemon.startupLogger()) }
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            Plugboardd.exit(withError: error)
        }
    }
}
