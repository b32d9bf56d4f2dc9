// plugboard-plugin-containers STATE_DIR: the containers plugin as a subprocess, like any
// other plugin. Its runc root and bundles live under STATE_DIR; the create and start hook
// chains run through the engine (it must be granted hooks.run:container.*, which plugins
// on plugboardd's command line are).
#if canImport(Glibc)
import Glibc
#endif
import Containers
import ContainersPlugin
import Foundation
import Logging
import PluginKit

let arguments = CommandLine.arguments.dropFirst()
let options = ProcessInfo.processInfo.environment["PLUGBOARD_OPTIONS"].flatMap { $0.isEmpty ? nil : $0 } ?? arguments.joined(separator: " ")
guard !options.isEmpty, options.hasPrefix("/") else {
    var text = Array("plugboard-plugin-containers: give the state directory (an absolute path), for example:\n  plugboardd --plugin-exec \"containers=plugboard-plugin-containers /var/lib/plugboard-containers\"\n".utf8)
    _ = write(2, &text, text.count)
    exit(2)
}
let logger = Logger(label: "containers")
do {
    let runtime = try ContainerRuntime(stateDirectory: options, shim: nil)
    await PluginKit.serve(ContainersPlugin(runc: runtime.runc, bundles: runtime.bundles + "/containers", logger: logger))
} catch {
    var text = Array("plugboard-plugin-containers: \(error)\n".utf8)
    _ = write(2, &text, text.count)
    exit(1)
}
