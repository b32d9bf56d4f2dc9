import Containers
import PluginKit

/// When a plugin that ended is started again.
public enum RestartPolicy: String, Sendable, Codable, CaseIterable {
    /// Whatever the exit.
    case always
    /// Unless it exited with status 0 (the default).
    case onFailure = "on-failure"
    /// Never.
    case never
}

/// Exponential backoff with jitter between restarts.
public struct Backoff: Sendable, Hashable {
    /// The first delay (default 100 ms).
    public var initial: Duration
    /// The largest delay (default 10 s).
    public var maximum: Duration
    /// Running this long counts as healthy and resets the delay (default 30 s).
    public var resetAfter: Duration
    /// ± this fraction of the delay, at random (default 0.2).
    public var jitter: Double

    /// A backoff starting at `initial` and doubling up to `maximum`, reset after `resetAfter`
    /// of running, with `jitter`.
    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(10), resetAfter: Duration = .seconds(30), jitter: Double = 0.2) {
        self.initial = initial
        self.maximum = maximum
        self.resetAfter = resetAfter
        self.jitter = jitter
    }

    /// The delay before restart number `attempt` (1-based), without jitter.
    public func delay(attempt: Int) -> Duration {
        var d = initial
        for _ in 1..<max(1, attempt) {
            d = d * 2
            if d >= maximum { return maximum }
        }
        return min(d, maximum)
    }
}

/// Too many restarts in a window: the plugin is marked `failed` instead of restarted.
public struct CrashLoopLimit: Sendable, Hashable {
    /// Restarts allowed in the window (default 5).
    public var restarts: Int
    /// The window (default 60 s).
    public var window: Duration

    /// A limit of `restarts` restarts within `window`.
    public init(restarts: Int = 5, window: Duration = .seconds(60)) {
        self.restarts = restarts
        self.window = window
    }
}

/// How to start a plugin and keep it alive.
public struct PluginSpec: Sendable {
    /// What the plugin is: a built-in, a subprocess or a container.
    public enum Kind: Sendable {
        /// In process: a PluginKit plugin linked into the daemon.
        case builtin(any Plugin)
        /// A subprocess speaking the protocol on fds 3/4.
        case exec(command: String, arguments: [String])
        /// The same protocol from inside an OCI container run by runc: a bundle directory
        /// with `rootfs/` and `plugin.json` (an absolute path).
        case container(bundle: String)
        /// A process that plugboardd did not start, which connects in over a socket
        /// (`--plugin-listen`), proven by its peer credentials or its TLS certificate
        /// (docs/REMOTE.md). It is never started or restarted by the daemon.
        case remote(RemoteAccess)
    }

    /// The name; nil for an exec plugin means "use the name it declares".
    public var name: String?
    /// What the plugin is, and so how it is started.
    public var kind: Kind
    /// The option string given to the plugin.
    public var options: String
    /// When it is started again after it ends (default on-failure).
    public var restartPolicy: RestartPolicy
    /// The delays between restarts.
    public var backoff: Backoff
    /// How many restarts in a window mark it failed instead.
    public var crashLoop: CrashLoopLimit
    /// Grant every job the plugin asks to call (plugins on the daemon's command line).
    public var grantAll: Bool
    /// How long to wait for its HELLO.
    public var startTimeout: Duration
    /// Container privileges granted one by one (`--grant network=host`).
    public var privileges: Set<Privilege>
    /// Grant a container plugin every privilege its manifest asks for (`--grant-all-permissions`).
    public var grantAllPrivileges: Bool
    /// Jobs it may call and hook privileges it holds beyond what `grantAll` gives
    /// (`grants` in the config file; the forms of ``Grants``).
    public var grants: Set<String> = []
    /// Hook priorities by event, over what it declares (`priorities` in the config file).
    public var hookPriorities: [String: Int] = [:]
    /// Hook timeouts by event, over what it declares (`plugin set NAME timeout:EVENT=2s`).
    public var hookTimeouts: [String: Duration] = [:]
    /// Pipeline priorities by message type, over what it declares.
    public var pipelinePriorities: [String: Int] = [:]
    /// Whether plugboardd must stop when this plugin cannot start at boot (true for plugins
    /// on the command line); an optional plugin that fails to start is listed `failed` and
    /// the daemon runs on.
    public var required = true
    /// The built-in's registered name (`--builtin NAME`), for the record of run-time changes.
    public var builtinName: String?
    /// Boot it disabled: listed, not started (an operator disabled it before a restart).
    public var startDisabled = false
    /// Take over the state a removed plugin of this name left (`plugin add --adopt-state`).
    public var adoptState: String?
    /// Memory, process and CPU limits, applied through the plugin's cgroup (exec plugins).
    public var limits = ResourceLimits()
    /// Every plugin may call its jobs without a grant: the services (events, state), which
    /// check their own permissions per caller.
    public var openToAll = false
    /// The image it was installed from (`plugboard plugin install`), with the digest pinned.
    public var image: ImageOrigin?
    /// A suffix for its runtime identity (container id, bundle and cgroup directories), so
    /// that a new version can run beside the old one during `plugin upgrade`; nil for none.
    public var instance: String?

    /// A spec for `kind`; the rest have defaults (`grantAll` is true, as for plugins on the
    /// daemon's command line).
    public init(
        name: String?, kind: Kind, options: String = "", restartPolicy: RestartPolicy = .onFailure,
        backoff: Backoff = Backoff(), crashLoop: CrashLoopLimit = CrashLoopLimit(), grantAll: Bool = true,
        startTimeout: Duration = .seconds(10), privileges: Set<Privilege> = [], grantAllPrivileges: Bool = false,
        openToAll: Bool = false
    ) {
        self.openToAll = openToAll
        self.privileges = privileges
        self.grantAllPrivileges = grantAllPrivileges
        self.name = name
        self.kind = kind
        self.options = options
        self.restartPolicy = restartPolicy
        self.backoff = backoff
        self.crashLoop = crashLoop
        self.grantAll = grantAll
        self.startTimeout = startTimeout
    }
}

/// A plugin's state, as `plugboard plugin ls` shows it.
public enum PluginState: String, Sendable, Codable {
    /// Starting (launched, not yet active), active (registered and serving), restarting (ended,
    /// waiting out the backoff), failed (ended in failure and not restarted: policy or crash loop),
    /// disabled (by an operator), stopped (shut down, or ended cleanly and not restarted).
    /// Away: a remote plugin that is not connected now (not yet, or its connection ended);
    /// calls to its jobs wait up to its start timeout for it to come back.
    case starting, active, restarting, failed, disabled, stopped, away
}

extension PluginSpec {
    /// How it would be added again, for the record of run-time changes; nil for a plugin
    /// that cannot be described that way (a service).
    var addedRecord: AddedPlugin? {
        guard !openToAll else { return nil }
        let privilegeTexts = privileges.map(\.description).sorted()
        switch kind {
        case .builtin:
            return AddedPlugin(kind: "builtin", builtin: builtinName, options: options, grantAllPermissions: grantAll, privileges: privilegeTexts)
        case .exec(let command, let arguments):
            return AddedPlugin(kind: "exec", command: [command] + arguments, options: options, grantAllPermissions: grantAll, privileges: privilegeTexts)
        case .container(let bundle):
            var record = AddedPlugin(kind: "container", bundle: bundle, options: options, grantAllPermissions: grantAllPrivileges, privileges: privilegeTexts)
            record.image = image?.reference
            record.digest = image?.digest
            return record
        case .remote:
            // Remote plugins come from the configuration (or the command line) only.
            return nil
        }
    }
}
