/// Anything registered by a plugin with a priority.
public protocol PrioritizedRegistration {
    /// The plugin that registered it.
    var owner: String { get }
    /// Higher runs first.
    var priority: Int { get }
}

extension Sequence where Element: PrioritizedRegistration {
    /// Higher priority first; ties broken by plugin name, so the order is never undefined.
    public func inPriorityOrder() -> [Element] {
        sorted { a, b in
            if a.priority != b.priority { return a.priority > b.priority }
            return a.owner < b.owner
        }
    }
}
