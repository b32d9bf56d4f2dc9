#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import PluginKit

/// `local-volumes`: a volume driver, Docker's VolumeDriver idea, as an ordinary plugin.
///
/// It provides the extension point `volume.driver` (priority 0): each volume is a
/// directory under the directory given as its option. The containers plugin asks the
/// driver a container names (`--volume-driver`), or the best provider of `volume.driver`,
/// to mount a volume, and binds the path it answers into the container.
///
/// Requests (`{"op": OP, "name": NAME}`): `create` and `mount` make the volume if needed and
/// answer `{"name", "path"}`; `unmount` answers `{"name"}`; `remove` deletes it; `list`
/// answers the names. Names are 1–64 of letters, digits, `.`, `_` and `-`, not starting with `.`.
public struct LocalVolumesPlugin: Plugin {
    /// The extension point volume drivers provide.
    public static let point = "volume.driver"

    /// A volume driver over directories under the option's directory.
    public init() {}

    /// Refuses an option that is not an absolute directory.
    public func checkOptions(_ options: String) throws {
        guard options.trimmingCharacters(in: .whitespaces).hasPrefix("/") else {
            throw PluginError(code: "volume.not-configured", message: "local-volumes needs an absolute directory as its option (--plugin local-volumes /var/lib/plugboard-volumes), not \"\(options)\"")
        }
    }

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "local-volumes", version: "1.0.0")
        let base = context.options.trimmingCharacters(in: .whitespaces)
        d.provide(Self.point) { argument in
            guard base.hasPrefix("/") else {
                throw PluginError(code: "volume.not-configured", message: "local-volumes needs an absolute directory as its option (--plugin local-volumes /var/lib/plugboard-volumes)")
            }
            let op = argument["op"]?.stringValue ?? ""
            if op == "list" {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
                return .array(names.sorted().map { .string($0) })
            }
            guard let name = argument["name"]?.stringValue, Self.isValidName(name) else {
                throw PluginError(code: "volume.bad-name", message: "a volume name is 1–64 letters, digits, '.', '_' or '-', not starting with '.', not \(argument["name"]?.description ?? "nothing")")
            }
            let path = base + "/" + name
            switch op {
            case "create", "mount":
                do {
                    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
                } catch {
                    throw PluginError(code: "volume.failed", message: "cannot make volume \(name) at \(path): \(error)")
                }
                return .fields(("name", .string(name)), ("path", .string(path)))
            case "unmount":
                return .fields(("name", .string(name)))
            case "remove":
                guard FileManager.default.fileExists(atPath: path) else {
                    throw PluginError(code: "volume.not-found", message: "no volume named \(name)")
                }
                try FileManager.default.removeItem(atPath: path)
                return .fields(("name", .string(name)), ("removed", true))
            default:
                throw PluginError(code: "volume.bad-op", message: "op is create, mount, unmount, remove or list, not \(op)")
            }
        }
        return d
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && !name.hasPrefix(".")
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "_" || $0 == "-") }
    }
}
