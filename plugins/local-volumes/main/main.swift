import LocalVolumesPlugin
import PluginKit

await PluginKit.serve(LocalVolumesPlugin())
