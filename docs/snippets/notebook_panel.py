from orchestra_nb import Doc, Flow
from orchestra_nb.notebook.panel import get_panel

f = Flow(name="panel-demo").add(name="encoder", replicas=2)
f.start()

widget = f.panel()  # the live widget; in a cell, `f` alone displays it
panel = get_panel(f)  # the object behind it, with what its tabs render
f.post("/", [Doc(text="hello")])
panel.refresh()
print(panel.status_html.value.count('data-state="ready"'))  # 3: two replicas and the gateway
print(panel.log_lines("encoder", level="INFO")[0])  # a Logs tab line: "… INFO encoder/0: serving encoder on …"

html = f._repr_html_()  # what GitHub and nbconvert show, where widgets do not run
f.close()
