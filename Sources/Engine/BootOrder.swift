/// The order plugins become active in: every plugin after the plugins providing the jobs
/// it requires; among the ready, the services (`first`) before the rest, then by name.
/// Shutdown runs it backwards, so the services stop last.
enum BootOrder {
    static func sort(_ plugins: [PluginDescription], first: Set<String> = []) throws -> [String] {
        var provider: [String: String] = [:]
        for p in plugins {
            for job in p.jobs { provider[job] = p.name }
        }
        var dependsOn: [String: Set<String>] = [:]
        for p in plugins {
            var deps = Set<String>()
            for job in p.requires {
                guard let owner = provider[job] else {
                    throw EngineError(.bootOrder, "plugin \(p.name) requires job \(job), which no plugin provides")
                }
                if owner != p.name { deps.insert(owner) }
            }
            dependsOn[p.name] = deps
        }
        var order: [String] = []
        var remaining = dependsOn
        while !remaining.isEmpty {
            let ready = remaining.filter { $0.value.isSubset(of: Set(order)) }.map(\.key).sorted {
                (first.contains($0) ? 0 : 1, $0) < (first.contains($1) ? 0 : 1, $1)
            }
            guard let next = ready.first else {
                let cycle = remaining.keys.sorted().joined(separator: ", ")
                throw EngineError(.bootOrder, "the requirements of plugins \(cycle) form a cycle")
            }
            order.append(next)
            remaining[next] = nil
        }
        return order
    }
}
