import EchoPlugin
import PluginKit

await PluginKit.serve(EchoPlugin())
