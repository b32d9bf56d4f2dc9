import AdminProtocol
import Containers
import Engine
import Foundation
import PluginKit

extension ConfiguredPlugin {
    /// The engine's spec for this entry. Jobs and hook privileges go to `grants`, container
    /// privileges to `privileges`; `grant-all-permissions` gives all it declares.
    func spec(builtins: [String: any Plugin]) throws -> PluginSpec {
        let specKind: PluginSpec.Kind
        switch kind {
        case .builtin(let builtin):
            guard let plugin = builtins[builtin] else { throw EngineError(.unknownBuiltin, "no built-in plugin named \(builtin) runs here") }
            specKind = .builtin(plugin)
        case .exec(let argv) where argv.isEmpty:
            // Only a name: plugboard-plugin-NAME, found as --plugin-exec NAME finds it (the
            // bare name when nowhere: its start then fails saying so).
            let found = PluginSearchPath.forThisProcess().find(name) ?? PluginSearchPath.executablePrefix + name
            specKind = .exec(command: found, arguments: [])
        case .exec(let argv):
            specKind = .exec(command: argv[0], arguments: Array(argv.dropFirst()))
        case .container(let bundle):
            specKind = .container(bundle: bundle)
        case .remote(let uids, let gids, let names):
            specKind = .remote(RemoteAccess(uids: Set(uids), gids: Set(gids), certificateNames: Set(names)))
        }
        var spec = PluginSpec(
            name: name, kind: specKind, options: options, grantAll: grantAllPermissions,
            privileges: Set(grants.compactMap(Privilege.init)), grantAllPrivileges: grantAllPermissions
        )
        spec.grants = Set(grants.filter { Privilege($0) == nil })
        spec.required = required
        spec.hookPriorities = priorities
        spec.pipelinePriorities = pipelinePriorities
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) { _ = try spec.set(key, value) }
        return spec
    }
}
