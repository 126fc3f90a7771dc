module deploy-render

go 1.19
