import Chan
import Foundation
import GRDB

/// A key/value store with a namespace per plugin, in one SQLite file (WAL mode,
/// `synchronous = FULL`: a write is on disk when its transaction commits, so an
/// acknowledged write survives kill -9 of the daemon and a power cut).
///
/// Values are msgpack (through Chan's codec); every key has a version that starts at 1 and
/// grows by one on each write, for compare-and-set.
public final class StateStore: Sendable {
    /// One stored entry.
    public struct Entry: Sendable, Hashable {
        public var key: String
        public var value: Value
        public var version: Int64
    }

    let pool: DatabasePool
    /// The SQLite file.
    public let path: String

    /// Opens (creating if needed) the store at `path`.
    public init(path: String) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        configuration.busyMode = .timeout(10)
        pool = try DatabasePool(path: path, configuration: configuration)  // WAL mode
        try pool.write { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS kv (
                    namespace TEXT NOT NULL,
                    key TEXT NOT NULL,
                    value BLOB NOT NULL,
                    version INTEGER NOT NULL,
                    updated TEXT NOT NULL,
                    PRIMARY KEY (namespace, key)
                ) WITHOUT ROWID
                """)
        }
    }

    /// The entry, or nil.
    public func get(_ namespace: String, _ key: String) async throws -> Entry? {
        // Rows are not Sendable: take the columns out inside the read (which runs on GRDB's
        // own queue, not on a cooperative thread).
        let found: (Data, Int64)? = try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT value, version FROM kv WHERE namespace = ? AND key = ?", arguments: [namespace, key])
                .map { ($0["value"], $0["version"]) }
        }
        guard let (bytes, version) = found else { return nil }
        return Entry(key: key, value: try Msgpack.decode(bytes), version: version)
    }

    /// Writes `value`; with `expected`, only if the current version is that (0: the key must
    /// not exist). Returns the new version once the transaction is committed.
    public func put(_ namespace: String, _ key: String, _ value: Value, expected: Int64?) async throws -> Int64 {
        let bytes = Data(try Msgpack.encode(value))
        let now = Date().formatted(.iso8601)
        return try await pool.write { db in
            let current = try Int64.fetchOne(db, sql: "SELECT version FROM kv WHERE namespace = ? AND key = ?", arguments: [namespace, key]) ?? 0
            if let expected, expected != current {
                throw StateError.versionConflict(key: key, expected: expected, current: current)
            }
            let next = current + 1
            try db.execute(
                sql: "INSERT INTO kv (namespace, key, value, version, updated) VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, version = excluded.version, updated = excluded.updated",
                arguments: [namespace, key, bytes, next, now]
            )
            return next
        }
    }

    /// Deletes the key; with `expected`, only at that version. Returns whether it existed.
    public func delete(_ namespace: String, _ key: String, expected: Int64?) async throws -> Bool {
        try await pool.write { db in
            let current = try Int64.fetchOne(db, sql: "SELECT version FROM kv WHERE namespace = ? AND key = ?", arguments: [namespace, key]) ?? 0
            if let expected, expected != current {
                throw StateError.versionConflict(key: key, expected: expected, current: current)
            }
            try db.execute(sql: "DELETE FROM kv WHERE namespace = ? AND key = ?", arguments: [namespace, key])
            return current > 0
        }
    }

    /// Entries whose key starts with `prefix`, in key order, at most `limit`.
    public func list(_ namespace: String, prefix: String, limit: Int) async throws -> [Entry] {
        let rows: [(String, Data, Int64)] = try await pool.read { db in
            // Keys between prefix and prefix + U+10FFFF: an index range, no LIKE escaping.
            try Row.fetchAll(
                db, sql: "SELECT key, value, version FROM kv WHERE namespace = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?",
                arguments: [namespace, prefix, prefix + "\u{10FFFF}", limit]
            ).map { ($0["key"], $0["value"], $0["version"]) }
        }
        return try rows.map { key, bytes, version in Entry(key: key, value: try Msgpack.decode(bytes), version: version) }
    }

    /// SQLite's own check of the file: "ok" when it is sound.
    public func integrityCheck() async throws -> String {
        try await pool.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") ?? "no answer" }
    }

    /// The journal mode in force ("wal").
    public func journalMode() async throws -> String {
        try await pool.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "unknown" }
    }
}

/// Why a state operation was refused.
public enum StateError: Error, CustomStringConvertible, Hashable {
    case versionConflict(key: String, expected: Int64, current: Int64)
    case notGranted(caller: String, namespace: String)
    case badRequest(String)

    public var description: String {
        switch self {
        case .versionConflict(let key, let expected, let current):
            return "version conflict on \(key): expected version \(expected), the current version is \(current)"
        case .notGranted(let caller, let namespace):
            return "plugin \(caller) may not use the state of \(namespace): it needs the grant state:\(namespace) (plugboard plugin grant \(caller) state:\(namespace))"
        case .badRequest(let text): return text
        }
    }
}
