import HostMountPlugin
import PluginKit

await PluginKit.serve(HostMountPlugin())
