import GRDB

/// A plugin's state belongs to that plugin, not to its name: `plugin rm` sets it aside
/// under `NAME@removed` (a form no plugin name can take), so a new plugin given the name
/// starts empty; `plugin add --adopt-state NAME` takes it back on purpose.
extension StateStore {
    /// Where a removed plugin's state is kept.
    public static func removedNamespace(_ plugin: String) -> String { plugin + "@removed" }

    /// Moves `plugin`'s keys aside, replacing what an earlier removal of that name left; a
    /// plugin with no keys leaves the earlier removal's in place. Returns how many keys moved.
    @discardableResult
    public func setAside(_ plugin: String) async throws -> Int {
        let aside = Self.removedNamespace(plugin)
        return try await pool.write { db in
            let own = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM kv WHERE namespace = ?", arguments: [plugin]) ?? 0
            guard own > 0 else { return 0 }
            try db.execute(sql: "DELETE FROM kv WHERE namespace = ?", arguments: [aside])
            try db.execute(sql: "UPDATE kv SET namespace = ? WHERE namespace = ?", arguments: [aside, plugin])
            return db.changesCount
        }
    }

    /// Gives `plugin` the keys a removed plugin `removed` left. Throws ``CustodyError`` when
    /// nothing was left, or when `plugin` already has keys of its own.
    @discardableResult
    public func adopt(_ removed: String, into plugin: String) async throws -> Int {
        let aside = Self.removedNamespace(removed)
        return try await pool.write { db in
            let own = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM kv WHERE namespace = ?", arguments: [plugin]) ?? 0
            guard own == 0 else { throw CustodyError(description: "plugin \(plugin) already has \(own) keys of its own; it cannot adopt \(removed)'s") }
            try db.execute(sql: "UPDATE kv SET namespace = ? WHERE namespace = ?", arguments: [plugin, aside])
            guard db.changesCount > 0 else { throw CustodyError(description: "no removed plugin named \(removed) left any state to adopt") }
            return db.changesCount
        }
    }
}

/// The state of a removed plugin could not be adopted.
public struct CustodyError: Error, CustomStringConvertible {
    /// What went wrong, for a person.
    public var description: String
}
