import LabelPlugin
import PluginKit

await PluginKit.serve(LabelPlugin())
