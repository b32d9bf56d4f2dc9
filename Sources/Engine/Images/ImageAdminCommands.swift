import AdminProtocol
import Chan
import Containers

/// The admin commands of plugin images: `plugin.install` and `plugin.upgrade`.
enum ImageAdminCommands {
    static func run(_ command: AdminCommand, _ body: Value, engine: Engine) async throws -> Value {
        switch command {
        case .pluginInstall:
            return try await AdminCommands.typed(Admin.PluginInstall.self, body) { r in
                var privileges: Set<Privilege> = []
                for text in r.privileges ?? [] {
                    guard let p = Privilege(text) else {
                        throw EngineError(.badSetting, "\(text) is not a privilege; write network=host, mount=SOURCE:DESTINATION[:ro], capability=CAP_NAME or device=/dev/NAME")
                    }
                    privileges.insert(p)
                }
                do {
                    let (status, origin) = try await engine.install(ImageInstall(
                        reference: r.reference, alias: r.alias, privileges: privileges, grantAll: r.grantAllPermissions, options: r.options ?? ""
                    ))
                    engine.bus.publish("plugin.installed", [
                        ("plugin", .string(status.name)), ("image", .string(origin.reference)), ("digest", .string(origin.digest)), ("source", "operator"),
                    ])
                    return Admin.PluginInstalled(name: status.name, state: status.state.rawValue, image: origin.reference, digest: origin.digest)
                } catch {
                    let (code, message) = AdminCommands.wireError(error)
                    engine.bus.publish("plugin.install-failed", [
                        ("image", .string(r.reference)), ("code", .string(code)), ("error", .string(message)), ("source", "operator"),
                    ])
                    throw error
                }
            }
        case .pluginUpgrade:
            return try await AdminCommands.typed(Admin.PluginUpgrade.self, body) { r in
                let grace = Duration.clampedMilliseconds(r.drainMilliseconds, default: .seconds(10))
                let result = try await engine.upgrade(r.name, exec: r.exec, image: r.reference, grace: grace)
                return Admin.PluginUpgraded(name: result.name, oldVersion: result.oldVersion, newVersion: result.newVersion, image: result.image, digest: result.digest)
            }
        default:
            throw AdminError(.badRequest, "\(command.rawValue) is not an image command")
        }
    }
}
