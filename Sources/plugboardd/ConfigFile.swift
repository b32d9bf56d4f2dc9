import Foundation
import TOMLKit

/// A problem in a configuration file: where (file, line, key) and what.
struct ConfigError: Error, CustomStringConvertible {
    let file: String
    let line: Int?
    let key: String
    let message: String

    /// "plugboard.toml:12: plugins.audit.restart-policy: …", the form compilers use.
    var description: String { "\(file)\(line.map { ":\($0)" } ?? ""): \(key): \(message)" }
}

/// A TOML value, taken out of TOMLKit at once (its types wrap C++ nodes and are not Sendable).
indirect enum ConfigNode: Sendable, Hashable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case array([ConfigNode])
    case table([String: ConfigNode])
    /// Dates and times: no setting takes one.
    case other(String)

    init(_ v: any TOMLValueConvertible) {
        switch v.type {
        case .string: self = .string(v.string ?? "")
        case .int: self = .int(v.int ?? 0)
        case .double: self = .double(v.double ?? 0)
        case .bool: self = .bool(v.bool ?? false)
        case .array: self = .array((v.array.map { Array($0) } ?? []).map { ConfigNode($0) })
        case .table:
            var entries: [String: ConfigNode] = [:]
            if let t = v.table { for key in t.keys { if let value = t[key] { entries[key] = ConfigNode(value) } } }
            self = .table(entries)
        default: self = .other(v.type.description)
        }
    }

    /// What a person calls this kind of value, for errors.
    var kind: String {
        switch self {
        case .string: return "a string"
        case .int: return "an integer"
        case .double: return "a number"
        case .bool: return "true or false"
        case .array: return "a list"
        case .table: return "a table"
        case .other(let type): return "a \(type)"
        }
    }
}

/// A parsed file: its tree and where each key was written, for errors.
struct ConfigDocument {
    let file: String
    let root: [String: ConfigNode]
    /// "plugins.audit.command" → its line. TOMLKit keeps no positions, so they come from a
    /// scan of the text: `[table]` headers and `key =` lines (dotted keys included).
    let lines: [String: Int]

    static func load(_ path: String) throws -> ConfigDocument {
        let name = (path as NSString).lastPathComponent
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, line: nil, key: "(file)", message: "cannot read it: \((error as NSError).localizedDescription)")
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(file: name, line: error.source.begin.line, key: "(syntax)", message: error.description)
        }
        guard case .table(let root) = ConfigNode(table) else {
            throw ConfigError(file: name, line: nil, key: "(file)", message: "not a TOML table")
        }
        return ConfigDocument(file: name, root: root, lines: scanLines(text))
    }

    static func scanLines(_ text: String) -> [String: Int] {
        var lines: [String: Int] = [:]
        var table = ""
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("#") || line.isEmpty { continue }
            if line.hasPrefix("[") {
                let inner = line.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).split(separator: "#").first.map(String.init) ?? ""
                table = unquote(inner.trimmingCharacters(in: .whitespaces))
                if lines[table] == nil { lines[table] = i + 1 }
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { continue }
            let key = unquote(String(line[..<eq]).trimmingCharacters(in: .whitespaces))
            let full = table.isEmpty ? key : table + "." + key
            if lines[full] == nil { lines[full] = i + 1 }
        }
        return lines
    }

    private static func unquote(_ key: String) -> String {
        key.split(separator: ".").map { $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'")) }.joined(separator: ".")
    }

    func error(_ key: String, _ message: String) -> ConfigError {
        // The key's own line, else its table's.
        var probe = key
        var line = lines[probe]
        while line == nil, let dot = probe.lastIndex(of: ".") {
            probe = String(probe[..<dot])
            line = lines[probe]
        }
        return ConfigError(file: file, line: line, key: key, message: message)
    }
}

/// Reads typed values out of one table, refusing unknown keys and wrong types.
struct ConfigTable {
    let document: ConfigDocument
    let path: String
    let entries: [String: ConfigNode]
    let allowed: Set<String>

    init(_ document: ConfigDocument, path: String, entries: [String: ConfigNode], allowed: Set<String>) throws {
        self.document = document
        self.path = path
        self.entries = entries
        self.allowed = allowed
        for key in entries.keys.sorted() where !allowed.contains(key) {
            throw document.error(qualified(key), "unknown key; the keys here are \(allowed.sorted().joined(separator: ", "))")
        }
    }

    func qualified(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    func error(_ key: String, _ message: String) -> ConfigError { document.error(qualified(key), message) }

    func string(_ key: String) throws -> String? {
        guard let node = entries[key] else { return nil }
        guard case .string(let s) = node else { throw error(key, "must be a string, not \(node.kind)") }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let node = entries[key] else { return nil }
        guard case .bool(let b) = node else { throw error(key, "must be true or false, not \(node.kind)") }
        return b
    }

    func int(_ key: String) throws -> Int? {
        guard let node = entries[key] else { return nil }
        guard case .int(let n) = node else { throw error(key, "must be a whole number, not \(node.kind)") }
        return n
    }

    func strings(_ key: String) throws -> [String]? {
        guard let node = entries[key] else { return nil }
        guard case .array(let items) = node else { throw error(key, "must be a list of strings, not \(node.kind)") }
        return try items.map { item in
            guard case .string(let s) = item else { throw error(key, "must hold strings only, not \(item.kind)") }
            return s
        }
    }

    /// A value `plugin set` would take as text: strings as they are, numbers written out.
    func settingText(_ key: String) throws -> String? {
        guard let node = entries[key] else { return nil }
        switch node {
        case .string(let s): return s
        case .int(let n): return String(n)
        case .double(let d): return String(d)
        default: throw error(key, "must be a string or a number, not \(node.kind)")
        }
    }

    /// A list of user or group ids (0 to 4294967294).
    func ids(_ key: String) throws -> [UInt32] {
        guard let node = entries[key] else { return [] }
        guard case .array(let items) = node else { throw error(key, "must be a list of numeric ids, not \(node.kind)") }
        return try items.map { item in
            guard case .int(let n) = item, n >= 0, n < Int(UInt32.max) else { throw error(key, "must hold ids from 0 to 4294967294, not \(item)") }
            return UInt32(n)
        }
    }

    func intTable(_ key: String) throws -> [String: Int]? {
        guard let node = entries[key] else { return nil }
        guard case .table(let t) = node else { throw error(key, "must be a table of NAME = NUMBER, not \(node.kind)") }
        var out: [String: Int] = [:]
        for (name, value) in t {
            guard case .int(let n) = value else { throw document.error(qualified(key) + "." + name, "must be a whole number, not \(value.kind)") }
            out[name] = n
        }
        return out
    }
}
