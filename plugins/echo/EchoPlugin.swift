import Chan
import PluginKit

/// `echo`: a job `echo` that returns its argument unchanged. Tests and benchmarks use it.
public struct EchoPlugin: Plugin {
    public init() {}

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "echo", version: "1.0.0")
        d.job("echo") { $0 }
        return d
    }
}
