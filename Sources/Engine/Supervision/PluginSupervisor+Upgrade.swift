import Containers

extension PluginSupervisor {
    /// What an operator gave the plugin at run time, which its new version keeps.
    struct Inheritance: Sendable {
        var grants: Set<String>
        var privileges: Set<Privilege>
        var hookOverrides: [String: (priority: Int?, timeout: Duration?)]
        var pipelineOverrides: [String: Int]
    }

    /// Grants, privileges and priority overrides, as `plugin grant` and `plugin set` left them.
    var inheritance: Inheritance {
        Inheritance(grants: extraGrants, privileges: extraPrivileges, hookOverrides: hookOverrides, pipelineOverrides: pipelineOverrides)
    }

    /// Takes over what the old version was given.
    func inherit(_ i: Inheritance) {
        extraGrants.formUnion(i.grants)
        extraPrivileges.formUnion(i.privileges)
        hookOverrides.merge(i.hookOverrides) { _, old in old }
        pipelineOverrides.merge(i.pipelineOverrides) { _, old in old }
    }
}
