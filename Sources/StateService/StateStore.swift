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
        /// The value's size as stored (msgpack-encoded), in bytes.
        public var storedBytes: Int
    }

    /// What ``list(_:prefix:after:limit:maxBytes:)`` found: the entries that fit, and
    /// whether more matched than fit in `maxBytes`.
    public struct Page: Sendable, Hashable {
        /// The entries, in key order.
        public var entries: [Entry]
        /// The first key that matched but did not fit, if one did not.
        public var cutBefore: String?
        /// That entry's size (key and value, encoded).
        public var cutBytes: Int
    }

    /// The largest value `put` accepts, msgpack-encoded: 256 KiB.
    public static let maximumValueBytes = 256 * 1024
    /// The longest key, in UTF-8 bytes.
    public static let maximumKeyBytes = 1024

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

    /// The entry, or nil. A stored value over `maxBytes` is not decoded: that throws
    /// ``StateError/replyTooLarge(_:)`` (values stored before the size limit may be larger).
    public func get(_ namespace: String, _ key: String, maxBytes: Int = Int.max) async throws -> Entry? {
        // Rows are not Sendable: take the columns out inside the read (which runs on GRDB's
        // own queue, not on a cooperative thread).
        let found: (Data, Int64)? = try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT value, version FROM kv WHERE namespace = ? AND key = ?", arguments: [namespace, key])
                .map { ($0["value"], $0["version"]) }
        }
        guard let (bytes, version) = found else { return nil }
        guard bytes.count <= maxBytes else {
            throw StateError.replyTooLarge("the value for \(key) is \(bytes.count) bytes, more than a reply carries (\(maxBytes) bytes); delete it (state.delete) and store it smaller")
        }
        return Entry(key: key, value: try Msgpack.decode(bytes), version: version, storedBytes: bytes.count)
    }

    /// Writes `value`; with `expected`, only if the current version is that (0: the key must
    /// not exist). Returns the new version once the transaction is committed. Refuses a key
    /// over ``maximumKeyBytes`` and a value over ``maximumValueBytes`` encoded.
    public func put(_ namespace: String, _ key: String, _ value: Value, expected: Int64?) async throws -> Int64 {
        guard key.utf8.count <= Self.maximumKeyBytes else { throw StateError.keyTooLarge(bytes: key.utf8.count) }
        // Refused before encoding when its strings and bytes alone are over the limit: a
        // 12 MiB value is not copied again just to be measured.
        let payload = Self.payloadBytes(value)
        guard payload <= Self.maximumValueBytes else { throw StateError.valueTooLarge(key: key, bytes: payload) }
        let bytes = Data(try Msgpack.encode(value))
        guard bytes.count <= Self.maximumValueBytes else { throw StateError.valueTooLarge(key: key, bytes: bytes.count) }
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

    /// The bytes of a value's strings, binaries and extension data: no more than its
    /// encoded size, and found without encoding it.
    static func payloadBytes(_ value: Value) -> Int {
        switch value {
        case .string(let s): return s.utf8.count
        case .binary(let b): return b.count
        case .ext(_, let data): return data.count
        case .array(let items): return items.reduce(0) { $0 + payloadBytes($1) }
        case .map(let entries): return entries.reduce(0) { $0 + payloadBytes($1.key) + payloadBytes($1.value) }
        case .nil, .bool, .int, .uint, .float, .channel: return 0
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

    /// Entries whose key starts with `prefix` (and comes after `after`, when given), in key
    /// order: at most `limit`, and only as many as fit in `maxBytes` (each counted as its
    /// key, its stored value and 32 bytes). Rows are read one at a time and reading stops at
    /// the first that does not fit, so a large listing never sits in memory whole.
    public func list(_ namespace: String, prefix: String, after: String? = nil, limit: Int, maxBytes: Int = Int.max) async throws -> Page {
        let rows: ([(String, Data, Int64)], String?, Int) = try await pool.read { db in
            // Keys between prefix and prefix + U+10FFFF: an index range, no LIKE escaping.
            let cursor = try Row.fetchCursor(
                db, sql: "SELECT key, value, version FROM kv WHERE namespace = ? AND key >= ? AND key < ? AND key > ? ORDER BY key LIMIT ?",
                arguments: [namespace, prefix, prefix + "\u{10FFFF}", after ?? "", limit]
            )
            var taken: [(String, Data, Int64)] = []
            var total = 0
            while let row = try cursor.next() {
                let key: String = row["key"]
                let value: Data = row["value"]
                let size = key.utf8.count + value.count + 32
                if total + size > maxBytes { return (taken, key, size) }
                total += size
                taken.append((key, value, row["version"]))
            }
            return (taken, nil, 0)
        }
        let entries = try rows.0.map { key, bytes, version in
            Entry(key: key, value: try Msgpack.decode(bytes), version: version, storedBytes: bytes.count)
        }
        return Page(entries: entries, cutBefore: rows.1, cutBytes: rows.2)
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
    /// A value over ``StateStore/maximumValueBytes``, encoded.
    case valueTooLarge(key: String, bytes: Int)
    /// A key over ``StateStore/maximumKeyBytes``.
    case keyTooLarge(bytes: Int)
    /// The answer would not fit in a reply; the text says what to ask instead.
    case replyTooLarge(String)

    /// The code a caller sees: `state.too-large` for sizes, else nil (the message says it).
    public var code: String? {
        switch self {
        case .valueTooLarge, .keyTooLarge: return "state.too-large"
        case .replyTooLarge: return "state.reply-too-large"
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .versionConflict(let key, let expected, let current):
            return "version conflict on \(key): expected version \(expected), the current version is \(current)"
        case .notGranted(let caller, let namespace):
            return "plugin \(caller) may not use the state of \(namespace): it needs the grant state:\(namespace) (plugboard plugin grant \(caller) state:\(namespace))"
        case .badRequest(let text), .replyTooLarge(let text): return text
        case .valueTooLarge(let key, let bytes):
            return "the value for \(key) is at least \(bytes) bytes encoded; a state value is at most \(StateStore.maximumValueBytes) bytes (256 KiB): keep large data elsewhere (a file, a byte stream) and store a reference"
        case .keyTooLarge(let bytes):
            return "the key is \(bytes) bytes; a state key is at most \(StateStore.maximumKeyBytes) bytes"
        }
    }
}
