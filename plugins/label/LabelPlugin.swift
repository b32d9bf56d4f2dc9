#if canImport(Glibc)
import Glibc
#endif
import Chan
import PluginKit

/// `label`: a container.create hook that adds one label to every container created,
/// `LABEL_KEY` (default `io.plugboard.labelled-by`) = the host name the plugin runs under.
///
/// Shipped as a container plugin (plugins/label/build-bundle.sh): inside its container the
/// host name is the plugin's name, so the label shows where the hook ran.
public struct LabelPlugin: Plugin {
    /// The label key when `LABEL_KEY` is not set.
    public static let defaultKey = "io.plugboard.labelled-by"

    public init() {}

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        // LABEL_VERSION (plugin.json's env) says which build this is; label.version answers it.
        let version = getenv("LABEL_VERSION").map { String(cString: $0) } ?? "1.0.0"
        var d = PluginDeclaration(name: "label", version: version)
        d.job("label.version") { _ in .string(version) }
        let key = getenv("LABEL_KEY").map { String(cString: $0) } ?? Self.defaultKey
        let value = Self.hostName()
        d.hook("container.create", priority: 40) { payload, _ in
            guard case .map(var entries) = payload else { return .veto("the container spec is not a map") }
            var labels = payload["labels"]?.mapValue ?? []
            labels.removeAll { $0.key.stringValue == key }
            labels.append((key: .string(key), value: .string(value)))
            entries.removeAll { $0.key.stringValue == "labels" }
            entries.append((key: "labels", value: .map(labels)))
            return .continue(.map(entries))
        }
        return d
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
