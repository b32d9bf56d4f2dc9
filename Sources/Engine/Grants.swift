import Containers
import Routing

/// The forms a grant takes, checked when it is given (`plugin grant`, a config file's
/// `grants`), not when it is first used:
///
/// - a job, an extension point or a hook chain a plugin may call: `state.get`,
///   `volume.driver`, `hooks.run:container.create`, `state:OTHER_PLUGIN` — a registration
///   name (printable, no spaces, no `=`);
/// - a hook privilege: `hook:mount=/srv/data`, `hook:mount=/srv/data:ro`, `hook:command`;
/// - a container privilege: `network=host`, `mount=SRC:DST[:ro]`, `capability=CAP_NAME`,
///   `device=/dev/NAME`.
public enum Grants {
    /// What is wrong with `token` as a grant, or nil when it is one of the forms above.
    public static func problem(with token: String) -> String? {
        if token.hasPrefix("hook:") {
            return HookPrivilege(String(token.dropFirst(5))) == nil
                ? "\(token) is not a hook privilege; write hook:mount=/HOST/PATH, hook:mount=/HOST/PATH:ro or hook:command" : nil
        }
        if token.contains("=") {
            return Privilege(token) == nil
                ? "\(token) is not a grant: a container privilege is network=host, mount=SRC:DST[:ro], capability=CAP_NAME or device=/dev/NAME; a hook privilege is hook:mount=/PATH or hook:command; a job has no '='" : nil
        }
        return Names.problem(withRegistrationName: token, what: "granted job")
    }
}
