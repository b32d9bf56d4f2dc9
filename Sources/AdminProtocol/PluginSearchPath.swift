#if canImport(Glibc)
import Glibc
#endif

/// Where plugins are found by name, as docker-machine finds `docker-machine-driver-NAME`:
/// plugin NAME is the executable `plugboard-plugin-NAME` in the first of these directories
/// that has one:
///
/// 1. each directory of `$PLUGBOARD_PLUGIN_PATH` (colon-separated), in order;
/// 2. each directory of `$PATH`, in order;
/// 3. `../libexec/plugboard/plugins` relative to the directory of the running binary (so
///    `/usr/local/bin/plugboardd` finds `/usr/local/libexec/plugboard/plugins`, and an
///    install under any `PREFIX` or `DESTDIR` finds its own plugins);
/// 4. the running binary's own directory (a build directory, `.build/debug`);
/// 5. `/usr/libexec/plugboard/plugins`.
///
/// Relative and empty entries of the two variables are skipped: a daemon does not look in
/// whatever its working directory is. plugboardd uses this for `--plugin-exec NAME`; the
/// `plugboard` CLI for `plugin ls --available` (with its own environment and location, so
/// it shows what a daemon started from the same shell and bin directory would find).
public struct PluginSearchPath: Sendable, Equatable {
    /// What every discoverable plugin executable's name starts with.
    public static let executablePrefix = "plugboard-plugin-"
    /// Where a distribution's package puts plugins.
    public static let systemDirectory = "/usr/libexec/plugboard/plugins"
    /// Where plugins are, relative to the directory of the binary that looks for them.
    public static let relativeDirectory = "../libexec/plugboard/plugins"

    /// The directories searched, in order (absolute, without duplicates).
    public let directories: [String]

    /// A search path of exactly `directories`.
    public init(directories: [String]) {
        var seen: Set<String> = []
        self.directories = directories.filter { seen.insert($0).inserted }
    }

    /// The standard order (see the type's documentation) for `environment` and a binary in
    /// `executableDirectory`.
    public static func standard(environment: [String: String], executableDirectory: String?) -> PluginSearchPath {
        func absoluteEntries(_ variable: String) -> [String] {
            (environment[variable] ?? "").split(separator: ":", omittingEmptySubsequences: true).map(String.init).filter { $0.hasPrefix("/") }
        }
        var directories = absoluteEntries("PLUGBOARD_PLUGIN_PATH") + absoluteEntries("PATH")
        if let executableDirectory {
            directories.append(normalized(executableDirectory + "/" + relativeDirectory))
            directories.append(executableDirectory)
        }
        directories.append(systemDirectory)
        return PluginSearchPath(directories: directories)
    }

    /// The standard order for this process: its environment and the directory of its
    /// executable (`/proc/self/exe`, symlinks resolved).
    public static func forThisProcess() -> PluginSearchPath {
        var environment: [String: String] = [:]
        for key in ["PLUGBOARD_PLUGIN_PATH", "PATH"] {
            if let value = getenv(key) { environment[key] = String(cString: value) }
        }
        return standard(environment: environment, executableDirectory: executableDirectory())
    }

    /// Whether `text` is a plugin name to look up rather than a command: not empty, and
    /// no `/`, no whitespace, no `=` and no quote.
    public static func isBareName(_ text: String) -> Bool {
        !text.isEmpty && !text.contains { $0 == "/" || $0 == "=" || $0 == "\"" || $0 == "'" || $0.isWhitespace }
    }

    /// The path of plugin `name`'s executable: the first directory's
    /// `plugboard-plugin-NAME` that is a regular file this process may execute.
    public func find(_ name: String) -> String? {
        guard Self.isBareName(name) else { return nil }
        for directory in directories {
            let path = directory + "/" + Self.executablePrefix + name
            if Self.isExecutableFile(path) { return path }
        }
        return nil
    }

    /// One plugin found by ``available()``.
    public struct Found: Sendable, Equatable, Codable {
        /// Its name: what follows `plugboard-plugin-`.
        public var name: String
        /// The executable `--plugin-exec NAME` would run.
        public var path: String

        /// A plugin `name` found at `path`.
        public init(name: String, path: String) {
            self.name = name
            self.path = path
        }
    }

    /// Every plugin that could be found, by name, each with the path ``find(_:)`` would
    /// choose (an executable in an earlier directory hides one of the same name later).
    public func available() -> [Found] {
        var found: [String: String] = [:]
        for directory in directories {
            guard let dir = opendir(directory) else { continue }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let file = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                }
                guard file.hasPrefix(Self.executablePrefix) else { continue }
                let name = String(file.dropFirst(Self.executablePrefix.count))
                guard Self.isBareName(name), found[name] == nil else { continue }
                let path = directory + "/" + file
                if Self.isExecutableFile(path) { found[name] = path }
            }
        }
        return found.keys.sorted().map { Found(name: $0, path: found[$0] ?? "") }
    }

    /// A regular file (symlinks followed) that this process may execute.
    static func isExecutableFile(_ path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return false }
        return access(path, X_OK) == 0
    }

    /// The directory of this process's executable, symlinks resolved; the directory
    /// holding an `.xctest` bundle when the executable is in one (the tests).
    static func executableDirectory() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var dir = parent(exe)
        if dir.hasSuffix(".xctest") { dir = parent(dir) }
        return dir
    }

    private static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// `path` with `.` and `..` components resolved textually (it is shown to people).
    static func normalized(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." { continue }
            if part == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }
}
