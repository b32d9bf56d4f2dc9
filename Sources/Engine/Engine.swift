/// The Engine layer. It exists so the package has its final shape; its contents arrive with
/// the issue that builds it (see docs and the open issues).
public enum EngineLayer {
    /// Whether this layer has been built yet.
    public static let isBuilt = false
}
