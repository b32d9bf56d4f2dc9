import HostMountPlugin
import PluginKit

enum HostMountPluginForTests {
    static let plugin: any Plugin = HostMountPlugin()
}
