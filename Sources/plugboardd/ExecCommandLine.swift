import AdminProtocol
import ArgumentParser

/// How `--plugin` and `--plugin-exec` values are read: `NAME=OPTION`, and a command line
/// with shell-like quoting (no expansion: the words go to execve as they are).
extension Plugboardd {
    /// "NAME=OPTION" → (NAME, OPTION); "NAME" → (NAME, "").
    static func splitNameAndOption(_ entry: String) -> (String, String) {
        guard let eq = entry.firstIndex(of: "=") else { return (entry, "") }
        return (String(entry[..<eq]), String(entry[entry.index(after: eq)...]))
    }

    /// "[NAME=]COMMAND ARGS..." with shell-like quoting → (NAME?, [COMMAND, ARGS...]); a
    /// bare "NAME" (no `/`, space, `=` or quote) → (NAME, [the path of plugboard-plugin-NAME
    /// found through `search`]).
    static func parseExec(_ entry: String, search: @autoclosure () -> PluginSearchPath = .forThisProcess()) throws -> (String?, [String]) {
        if PluginSearchPath.isBareName(entry) { return (entry, [try discoverPlugin(entry, in: search())]) }
        var name: String?
        var rest = Substring(entry)
        if let eq = rest.firstIndex(of: "="), !rest[..<eq].contains(" "), !rest[..<eq].contains("/") {
            name = String(rest[..<eq])
            rest = rest[rest.index(after: eq)...]
        }
        return (name, try splitWords(String(rest)))
    }

    static func splitWords(_ text: String) throws -> [String] {
        var words: [String] = []
        var current = ""
        var quote: Character?
        var inWord = false
        for c in text {
            if let q = quote {
                if c == q { quote = nil } else { current.append(c) }
            } else if c == "\"" || c == "'" {
                quote = c
                inWord = true
            } else if c == " " || c == "\t" {
                if inWord { words.append(current); current = ""; inWord = false }
            } else {
                current.append(c)
                inWord = true
            }
        }
        if quote != nil { throw ValidationError("unbalanced quote in \"\(text)\"") }
        if inWord { words.append(current) }
        return words
    }
}
